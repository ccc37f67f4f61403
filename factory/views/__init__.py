"""Views: filters over a dataset's index. ``predicate`` (the ``--where`` language), ``views`` (filter specs,
computing and writing a view), ``materialize`` (a view re-packed as a new dataset on the DatasetWriter)."""

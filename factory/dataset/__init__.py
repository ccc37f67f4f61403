"""A dataset on disk or object store: ``reader`` (index and shards, checked), ``writer`` (the one
DatasetWriter of generate and materialize), ``shards`` (committing one shard), ``card`` (README.md),
``preview`` (contact sheet), ``verify`` (integrity), ``info`` (what `factory info` prints)."""

"""`factory generate`: from a spec to committed shards.

``config`` (the settings that decide the bytes vs runtime settings), ``plan`` (shards, latents, direction),
``compute`` (generator pair, masks, statistics), ``encode`` (tar records), ``worker`` (one shard),
``distribute`` (dask), ``engine`` (``generate()``: the spec, the shards to make, the manifest's fields),
``bench`` (the same path with per-stage timers), ``regenerate`` (`verify --regenerate`: samples made
again from a manifest's spec and compared with the stored ones). The output folder itself (lock, spec check, wipe, resume
from sidecars, manifest last, card) is ``factory.dataset.writer.DatasetWriter``'s, shared with
``filter --materialize``.
"""

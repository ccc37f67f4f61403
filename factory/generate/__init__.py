"""`factory generate`: from a spec to committed shards.

``config`` (the settings that decide the bytes vs runtime settings), ``plan`` (shards, latents, direction),
``compute`` (generator pair, masks, statistics), ``encode`` (tar records), ``worker`` (one shard),
``distribute`` (dask), ``engine`` (``generate()``: output folder, resume, manifest, card), ``bench``
(the same path with per-stage timers).
"""

"""`factory upgrade`: a dataset of an older format version brought to the current one in place.

Version 1 -> 2 adds each sample's byte range in its tar (index columns ``tar_offset`` / ``tar_size``)
without touching a tar: per shard, the tar is read and checked against the manifest's sha256, its
records are located (`format.member_ranges`), and the index fragment is rewritten atomically with the
two columns, byte for byte what the current writer writes; then the shard's sidecar; the card and
manifest.json last. The dataset id changes (it hashes the format version and the fragments), and the
manifest records the old one under ``upgraded_from``, so views made before still resolve.

Version 2 -> 3 (a dataset of `compact.COMPACT_MIN_SHARDS` shards or more, or any with ``compact``) reads
only the index: its fragments are compacted into parts (`factory.dataset.compact`); tars, latents and
sidecars are untouched, the manifest names the parts, and the fragments are deleted after it. The result
is version 4: the shard entries kept in the shard table beside the manifest (`format.shardtable`).

Version 3 -> 4 reads nothing but the manifest: the same shard entries written as the shard table, the
manifest naming it (the dataset id changes with the format version; ``upgraded_from`` keeps the old one).

A killed upgrade is run again: a fragment already carrying offsets is accepted when its offsets equal
the tar's and it is exactly what the writer makes of its other columns. Readers should not read the
dataset while it is being upgraded (fragments and manifest disagree until the manifest is written).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from factory import format as fmt
from factory.dataset.card import index_stats, write_card
from factory.dataset.compact import compact, drop_fragments, should_compact, table_manifest
from factory.dataset.reader import load_index
from factory.dataset.shards import index_table, parquet_bytes, table_rows, with_offsets
from factory.dataset.signing import drop_signatures
from factory.dataset.writer import DatasetLock
from factory.format import FactoryError
from factory.format import index as fidx
from factory.fsio import atomic_write, exists


@dataclass
class UpgradeResult:
    root: str
    from_version: int
    dataset_id: str
    previous_id: str | None
    shards: int
    to_version: int = fmt.FORMAT_VERSION
    parts: int = 0
    unsigned: list[str] = field(default_factory=list)  # who signed the signatures removed (over the old manifest)

    def summary(self) -> str:
        if self.unsigned:
            return f"{self.outcome()}\n{self.unsigned_line()}"
        return self.outcome()

    def unsigned_line(self) -> str:
        return (f"old signatures removed ({', '.join(self.unsigned)}): they were over the manifest before the "
                f"upgrade and no longer apply; sign again: factory sign {self.root} --key KEY.pem")

    def outcome(self) -> str:
        if self.previous_id is None:
            return (f"{self.root}: dataset {self.dataset_id} is already format version {self.to_version} "
                    "with its layout; nothing to do")
        what = []
        if self.from_version < 2:
            what.append(f"{self.shards} index fragments gained tar offsets")
        if self.parts:
            what.append(f"the index compacted into {self.parts} part{'s' if self.parts > 1 else ''}")
        if self.to_version >= fmt.TABLE_VERSION:
            what.append(f"the shard entries in {fmt.SHARD_TABLE}")
        return (f"{self.root}: upgraded from format version {self.from_version} to {self.to_version} "
                f"({'; '.join(what)}; tars untouched); dataset id "
                f"{self.previous_id} -> {self.dataset_id} (views of the old id still open)")


def upgraded_fragment(root: str, entry: dict) -> bytes:
    """The index fragment of one shard with tar offsets, from its tar and its current fragment."""
    url = fmt.join(root, entry["path"])
    try:
        tar = fmt.read_bytes(url)
    except FileNotFoundError:
        raise FactoryError(f"shard missing: {url}; the dataset is incomplete (factory verify tells more)") from None
    if fmt.sha256_bytes(tar) != entry["sha256"]:
        raise FactoryError(f"shard {url} does not match the manifest's sha256; run factory verify before upgrading")
    table = load_index(root, {"shards": [entry]}, check_sha=False)
    rows = table_rows(table.drop_columns([c for c in fmt.OFFSET_COLUMNS if c in table.column_names]))
    return parquet_bytes(index_table(with_offsets(rows, tar, url)))


def upgrade_shard(root: str, entry: dict) -> dict:
    """Bring one shard's fragment to the current format; its manifest entry with the new index sha256."""
    iurl = fmt.join(root, entry["index"])
    current = fmt.read_bytes(iurl)
    new = upgraded_fragment(root, entry)
    if fmt.sha256_bytes(current) != entry["index_sha256"] and current != new:
        raise FactoryError(f"index fragment {iurl} matches neither the manifest nor its upgrade; "
                           "run factory verify (the dataset changed)")
    if current != new:
        atomic_write(iurl, new)
    out = dict(entry, index_sha256=fmt.sha256_bytes(new))
    done = fmt.join(root, fmt.done_name(entry["shard"]))
    if exists(done):
        side = fmt.read_json(done, "sidecar")
        if side.get("index_sha256") != out["index_sha256"]:
            atomic_write(done, fmt.canonical_json(dict(side, index_sha256=out["index_sha256"])))
    return out


def upgrade_range(url: str, *, dataset_id: str, lo: int, hi: int) -> list[dict]:
    """A cluster task of `upgrade`: `upgrade_shard` of the shards at positions lo..hi-1 (by id) of the dataset
    at `url`, opened by the worker itself (its id must still be `dataset_id`); their new manifest entries."""
    res = fmt.open_dataset(url)
    if res.manifest["dataset_id"] != dataset_id:
        raise FactoryError(f"{url} changed during upgrade (dataset id {res.manifest['dataset_id']}, "
                           f"was {dataset_id}); run upgrade again")
    return [upgrade_shard(res.root, e) for e in sorted(res.manifest["shards"], key=lambda s: s["shard"])[lo:hi]]


def upgrade(url: str, *, compact_index: bool = False, log=None, scheduler: str | None = None,
            workers: int = 0) -> UpgradeResult:
    """`factory upgrade DATASET`: add what the current format records to an older dataset, in place; a
    dataset of many shards (or any, with ``compact_index``) gets its index compacted into parts. ``scheduler``:
    the fragments are upgraded as shard-range tasks on that dask cluster (`factory.cluster`; or on ``workers``
    local worker processes); the compaction
    and the manifest stay in this process."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    res = fmt.open_dataset(url)
    if res.view is not None:
        raise FactoryError(f"{url} is a view; upgrade its dataset ({res.root}) instead")
    m = res.manifest
    version = m["format_version"]
    offsets = version < 2
    parts = fidx.has_parts(m)
    squeeze = not parts and (compact_index or should_compact(m))
    tabled = parts and version < fmt.TABLE_VERSION  # version 3: the shard list moves into the shard table
    if not offsets and not squeeze and not tabled:
        old = (m.get("upgraded_from") or {}).get("dataset_id")
        unsigned = []
        if parts or old:
            with DatasetLock(res.root):  # a run killed after its manifest: what it had left to drop
                if parts:
                    drop_fragments(res.root, m)
                if old:
                    unsigned = drop_signatures(res.root, old)
        return UpgradeResult(res.root, version, m["dataset_id"], None, len(m["shards"]), version, unsigned=unsigned)
    with DatasetLock(res.root):
        new = dict(m)
        if offsets:
            entries = sorted(m["shards"], key=lambda s: s["shard"])
            if scheduler or workers:
                from factory.cluster import run_tasks, shard_ranges

                tasks = [dict(url=url, dataset_id=m["dataset_id"], lo=lo, hi=hi) for lo, hi in shard_ranges(len(entries))]
                name = f"upgrade-{m['dataset_id'][3:15]}"
                shards = [e for done in run_tasks(scheduler, upgrade_range, tasks, name=name, workers=workers) for e in done]
                log(f"upgrade: {len(shards)}/{len(entries)} index fragments")
            else:
                shards = []
                for i, e in enumerate(entries):
                    shards.append(upgrade_shard(res.root, e))
                    if (i + 1) % 100 == 0 or i + 1 == len(entries):
                        log(f"upgrade: {i + 1}/{len(entries)} index fragments")
            lat = (m.get("latents") or {}).get("sha256_of_shard_hashes")
            new = dict(m, format_version=fmt.FORMAT_VERSION, shards=shards, dataset_id=fmt.dataset_id(shards, lat))
        if squeeze:
            new = compact(res.root, new, log=log)
        elif tabled:
            new = table_manifest(m)
        new["upgraded_from"] = {"dataset_id": m["dataset_id"], "format_version": version}
        new["index_stats"] = m.get("index_stats") or index_stats(res.root, new, check_sha=False)
        write_card(res.root, new)
        fmt.write_manifest(res.root, new)
        drop_fragments(res.root, new)
        unsigned = drop_signatures(res.root)  # they sign the old manifest's bytes
    n_parts = len(new["index"]["parts"]) if squeeze else 0
    return UpgradeResult(res.root, version, new["dataset_id"], m["dataset_id"], len(new["shards"]),
                         new["format_version"], n_parts, unsigned)

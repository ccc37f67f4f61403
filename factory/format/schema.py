"""The manifest's schema beyond its shard list, the limits on JSON from elsewhere, and the checks
that tie a manifest's fields together.

* ``loads_json``: a JSON document of at most MAX_JSON_BYTES, nested at most MAX_JSON_DEPTH deep
  (counted without recursion before it is parsed), else one FormatError line.
* ``check_manifest_fields``: every field besides ``shards`` against its type and range (resolution,
  dim_z, latents, members, spec's shape); run by ``format.validate_manifest`` for every reader.
* ``manifest_problems``: what the fields must agree on (shard ids 0..K-1, contiguous rows, samples
  that fit in a shard's bytes, the latents hash, the dataset id as the content hash of the shards). ``factory verify`` reports them;
  ``trainers`` refuses a manifest with any (``check_manifest``) before it allocates anything.
"""
from __future__ import annotations

import functools
import json
import operator
import re
from typing import Any

from factory.format.errors import FormatError
from factory.format.names import (
    DATASET_KIND,
    IMAGE_CODECS,
    IMAGE_FORMATS,
    LATENTS,
    MAPS_KIND,
    MASK_RULES,
    MAX_SAMPLES,
    PLATFORM_ID,
    READ_VERSIONS,
    SHARD_TABLE,
    VIEW_KIND,
    canonical_json,
    dataset_id_of_columns,
    sha256_bytes,
)
from factory.format.paths import check_plain_paths, check_relative_path
from factory.format.shardtable import ShardTable, columns_of, schema_problem
from factory.format.store import read_bytes
from factory.format.views import check_accepted

MAX_JSON_BYTES = 256 << 20  # a manifest or view; a view of 10M rows is ~100 MB
MAX_JSON_DEPTH = 64  # our documents nest 5 deep
MAX_RESOLUTION = 4096  # side of a square sample image (format.MAX_IMAGE_PIXELS = 4096 x 4096)
MAX_DIM_Z = 1 << 16
MIN_SAMPLE_BYTES = 1024  # a sample holds at least an image and a mask member: two 512-byte tar headers

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PLATFORM_ID = PLATFORM_ID
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_EXT = re.compile(r"^[a-z0-9]+(?:\.[a-z0-9]+)*$")
_HEX_DIGITS = b"0123456789abcdef"
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b'[]{}"')  # deleted before the depth is counted


def json_depth(data: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """Deepest nesting of arrays/objects in JSON text, counted without recursion (vectorised);
    stops counting once above ``limit``."""
    import numpy as np

    if b"\\" not in data:  # no escapes: strings are the text between quote pairs, found in one pass
        tok = _bracket_table()[np.frombuffer(data.translate(None, _NOT_BRACKETS), np.uint8)]
        quote = tok == 2
        if int(np.count_nonzero(quote)) % 2 == 0:
            outside = (np.cumsum(quote) & 1) == 0
            run = np.cumsum(np.where(outside & ~quote, tok, 0).astype(np.int64))
            return max(0, int(run.max())) if run.shape[0] else 0
    text = np.frombuffer(_STRING.sub(b'""', data), np.uint8)
    depth = peak = 0
    for i in range(0, text.shape[0], 1 << 22):
        c = text[i:i + (1 << 22)]
        step = (c == 91).astype(np.int64) + (c == 123) - (c == 93) - (c == 125)  # [ { ] }
        run = np.cumsum(step) + depth
        peak = max(peak, int(run.max()))
        depth = int(run[-1])
        if peak > limit:
            break
    return peak


@functools.lru_cache(maxsize=1)
def _bracket_table():
    import numpy as np

    t = np.zeros(256, np.int8)
    t[[91, 123]], t[[93, 125]], t[34] = 1, -1, 2  # [ { open, ] } close, " a quote
    return t


def loads_json(data: bytes, what: str) -> Any:
    """Parse JSON from elsewhere within MAX_JSON_BYTES and MAX_JSON_DEPTH; FormatError (one line) otherwise."""
    if len(data) > MAX_JSON_BYTES:
        raise FormatError(f"{what} is over the {MAX_JSON_BYTES:,} byte limit for a manifest or view")
    if json_depth(data) > MAX_JSON_DEPTH:
        raise FormatError(f"{what} nests arrays/objects more than {MAX_JSON_DEPTH} deep; not a manifest or view")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(f"{what} is not valid JSON: {str(e).splitlines()[0][:200]}") from None


def _int(obj: dict, key: str, where: str, *, lo: int, hi: int, optional: bool = False, prefix: str = ""):
    v = obj.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise FormatError(f"{where}: {prefix}{key} must be an integer in {lo}..{hi}, got {str(v)[:40]!r}")
    return v


def _typed(obj: dict, key: str, types: tuple, *, where: str, what: str, prefix: str = ""):
    v = obj.get(key)
    if v is not None and (not isinstance(v, types) or (isinstance(v, bool) and bool not in types)):
        raise FormatError(f"{where}: {prefix}{key} must be {what}, got {type(v).__name__}")
    return v


_SPEC_FIELDS = {  # field -> (types, what): the shape a reader relies on
    "generator": ((dict,), "an object"), "latents": ((dict,), "an object"), "direction": ((dict,), "an object"),
    "image_codec": ((dict,), "an object"), "keep_raw_mask": ((bool,), "true or false"),
    "mask_rule": ((str,), "a string"), "n": ((int,), "an integer"), "shard_size": ((int,), "an integer"),
    "shift_r": ((int, float), "a number"), "max_fg": ((int, float), "a number"),
    "cc_ratio": ((int, float), "a number"), "format_version": ((int,), "an integer"),
    "labels": ((dict,), "an object"), "operators": ((dict,), "an object"),
}
LATENT_KINDS = {  # kind -> its fields besides kind, seed, dim_z: (types, what)
    "gaussian": {}, "truncated": {"bound": ((int, float), "a number"), "scale": ((int, float), "a number")},
    "embeddings": {"name": ((str,), "a string"), "z_noise": ((int, float), "a number"), "sha256": ((str,), "a digest"),
                   "rows": ((int,), "an integer")},
    "file": {"sha256": ((str,), "a digest"), "rows": ((int,), "an integer")},
}
_INT, _NUM, _STR, _LIST = ((int,), "an integer"), ((int, float), "a number"), ((str,), "a string"), ((list,), "a list")
CODEC_FIELDS = {"png": {"png_level": _INT}, "webp": {"lossless": ((bool,), "true or false"), "method": _INT,
                                                      "effort": _INT},
                "jpeg": {"quality": _INT, "subsampling": _STR}}  # each codec's fields besides image and mask
SPEC_OBJECTS = {  # spec object -> {field: (types, what)}; sha256 fields are 64-digit digests
    "direction": {"name": _STR, "file": _STR, "sha256": _STR},
    "labels": {"seed": _INT},
    "operators": {"file": _STR, "sha256": _STR, "values": _LIST},
}
DERIVED_KINDS = ("materialized-view", "relabelled")  # provenance.kind of a dataset copied from a parent


def _check_spec(spec: Any, where: str) -> None:
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise FormatError(f"{where}: spec must be an object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(_SPEC_FIELDS))
    if unknown:
        raise FormatError(f"{where}: spec.{str(unknown[0])[:40]} is not a field of a dataset spec (a spec holds only "
                          "what decides the bytes: " + ", ".join(sorted(_SPEC_FIELDS)) + ")")
    for key, (types, what) in _SPEC_FIELDS.items():
        _typed(spec, key, types, where=where, what=what, prefix="spec.")
    for key, lo, hi in (("cc_ratio", 0.0, 1.0), ("max_fg", 0.0, 1.0)):
        if spec.get(key) is not None and not lo <= spec[key] <= hi:
            raise FormatError(f"{where}: spec.{key} must be in [{lo:g}, {hi:g}], got {spec[key]!r}")
    _check_codec(spec.get("image_codec"), where)
    _check_spec_latents(spec.get("latents"), where)
    for name, fields in SPEC_OBJECTS.items():
        obj = spec.get(name)
        if obj is None:
            continue
        for key, (types, what) in fields.items():
            if obj.get(key) is None and (key == "sha256" or name == "labels"):
                raise FormatError(f"{where}: spec.{name}.{key} is missing")
            _typed(obj, key, types, where=where, what=what, prefix=f"spec.{name}.")
        if "sha256" in obj and not _HEX64.match(obj["sha256"]):
            raise FormatError(f"{where}: spec.{name}.sha256 is not a 64-digit lowercase hex digest")
    if spec.get("mask_rule") is not None and spec["mask_rule"] not in MASK_RULES:
        raise FormatError(f"{where}: spec.mask_rule {spec['mask_rule'][:40]!r} is not one of {', '.join(MASK_RULES)}")
    if spec.get("shard_size") is not None and spec["shard_size"] < 1:
        raise FormatError(f"{where}: spec.shard_size must be >= 1")
    gen = spec.get("generator") or {}
    _typed(gen, "name", (str,), where=where, what="a string", prefix="spec.generator.")
    _int(gen, "resolution", where, lo=1, hi=MAX_RESOLUTION, optional=True, prefix="spec.generator.")


def _check_codec(codec: dict | None, where: str) -> None:
    """spec.image_codec: a known image codec with its fields typed; masks are PNG."""
    if codec is None:
        return
    if not isinstance(codec.get("image"), str) or codec["image"] not in IMAGE_CODECS:
        raise FormatError(f"{where}: spec.image_codec.image {str(codec.get('image'))[:40]!r} is not one of "
                          f"{', '.join(IMAGE_CODECS)}")
    if codec.get("mask", "png") != "png":
        raise FormatError(f"{where}: spec.image_codec.mask must be 'png'")
    for key, (types, what) in CODEC_FIELDS.get(codec["image"], {}).items():
        if codec.get(key) is None:
            raise FormatError(f"{where}: spec.image_codec.{key} is missing (codec {codec['image']!r} needs it)")
        _typed(codec, key, types, where=where, what=what, prefix="spec.image_codec.")


def _check_spec_latents(lat: dict | None, where: str) -> None:
    """spec.latents: a known kind with the fields that kind needs (a file or embeddings by sha256)."""
    if lat is None:
        return
    kind = lat.get("kind")
    if not isinstance(kind, str) or kind not in LATENT_KINDS:
        raise FormatError(f"{where}: spec.latents.kind {str(kind)[:40]!r} is not one of {', '.join(LATENT_KINDS)}")
    _int(lat, "seed", where, lo=0, hi=2**63 - 1, prefix="spec.latents.")
    for key, (types, what) in LATENT_KINDS[kind].items():
        if lat.get(key) is None:
            raise FormatError(f"{where}: spec.latents.{key} is missing (latents of kind {kind!r} need it)")
        _typed(lat, key, types, where=where, what=what, prefix="spec.latents.")
    if "sha256" in LATENT_KINDS[kind] and not _HEX64.match(lat["sha256"]):
        raise FormatError(f"{where}: spec.latents.sha256 is not a 64-digit lowercase hex digest")


def _check_spec_counts(obj: dict, where: str) -> None:
    """spec.n and spec.shard_size against the shards: a generated dataset holds exactly n samples in shards
    of at most shard_size (a derived one at most n: a view's copy)."""
    spec = obj.get("spec") or {}
    n, size, shards = spec.get("n"), spec.get("shard_size"), obj.get("shards")
    if n is None or not isinstance(shards, (list, ShardTable)):
        return
    derived = isinstance(obj.get("provenance"), dict) and obj["provenance"].get("kind") in DERIVED_KINDS
    if n != obj["samples"] if not derived else n < obj["samples"]:
        raise FormatError(f"{where}: spec.n is {n} but the shards hold {obj['samples']} samples")
    if not derived and size is not None and not _all_within(shards, size):
        big = [s for s in shards if isinstance(s, dict) and isinstance(s.get("samples"), int) and s["samples"] > size]
        if big:
            raise FormatError(f"{where}: shard {big[0].get('shard')} holds {big[0]['samples']} samples, more than "
                              f"spec.shard_size {size}")


def _all_within(shards: list, size: Any) -> bool:
    """Whether every entry is an object whose samples are integers of at most ``size`` (one pass in C)."""
    if isinstance(shards, ShardTable) and shards.checked_total is not None:
        return not len(shards) or (isinstance(size, (int, float)) and shards.column("samples").max() <= size)
    if not shards or set(map(type, shards)) != {dict}:
        return not shards
    counts = list(map(_SAMPLES_OF, shards))
    return set(map(type, counts)) == {int} and isinstance(size, (int, float)) and max(counts) <= size


def _check_members(members: Any, where: str) -> None:
    if members is None:
        return
    if not isinstance(members, dict):
        raise FormatError(f"{where}: members must be an object, got {type(members).__name__}")
    for k, v in members.items():
        if not isinstance(v, str) or not _EXT.match(v):
            raise FormatError(f"{where}: members.{k} must be a member extension like 'mask.png', got {str(v)[:40]!r}")
    if "image" in members and members["image"] not in IMAGE_FORMATS:
        raise FormatError(f"{where}: members.image '.{members['image']}' is not one of {', '.join(IMAGE_FORMATS)}")


def _check_latents(lat: Any, where: str) -> None:
    if lat is None:
        return
    if not isinstance(lat, dict):
        raise FormatError(f"{where}: latents must be an object, got {type(lat).__name__}")
    path = lat.get("path", LATENTS)
    if path != LATENTS:
        raise FormatError(f"{where}: latents.path is {str(path)[:80]!r}; a dataset keeps its latents in "
                          f"{LATENTS} inside its folder")
    h = lat.get("sha256_of_shard_hashes")
    if h is not None and not (isinstance(h, str) and _HEX64.match(h)):
        raise FormatError(f"{where}: latents.sha256_of_shard_hashes is not a 64-digit lowercase hex digest")


def _check_platforms(table: Any, where: str) -> None:
    if table is None:
        return
    if not isinstance(table, dict):
        raise FormatError(f"{where}: platforms must be an object, got {type(table).__name__}")
    for pid, rec in table.items():
        if not _PLATFORM_ID.match(pid):
            raise FormatError(f"{where}: platforms key {pid[:40]!r} is not a platform id like 'pf-3a1f40d8932c'")
        if not isinstance(rec, dict) or not all(v is None or isinstance(v, (str, int, float, bool))
                                                for v in rec.values()):
            raise FormatError(f"{where}: platforms.{pid} must be an object of plain values (device, torch, ...)")


def platform_record_id(record: dict) -> str:
    """The id of a platform record (``pf-`` + 12 hex of its canonical JSON's sha256)."""
    return "pf-" + sha256_bytes(canonical_json(record))[:12]


def check_manifest_fields(obj: dict, where: str) -> None:
    """Every manifest field besides the shard list against the schema (types and ranges); FormatError."""
    if obj.get("kind") != DATASET_KIND:
        return
    _int(obj, "samples", where, lo=0, hi=MAX_SAMPLES)
    _int(obj, "dim_z", where, lo=1, hi=MAX_DIM_Z)
    _int(obj, "bytes", where, lo=0, hi=MAX_SAMPLES * (64 << 20), optional=True)
    _int(obj, "resolution", where, lo=1, hi=MAX_RESOLUTION, optional=True)
    for key in ("spec_hash", "code_version"):
        _typed(obj, key, (str,), where=where, what="a string")
    _check_latents(obj.get("latents"), where)
    _check_members(obj.get("members"), where)
    _check_spec(obj.get("spec"), where)
    _check_spec_counts(obj, where)
    _check_platforms(obj.get("platforms"), where)


def check_shard_fields(s: dict, w: str) -> None:
    """Ranges of one shard entry whose types were checked: rows and bytes a reader may allocate for."""
    if s["first_row"] + s["samples"] > MAX_SAMPLES:
        raise FormatError(f"{w}: rows {s['first_row']}.. + {s['samples']} exceed the {MAX_SAMPLES} sample limit")
    h = s.get("latents_sha256")
    if h is not None and not (isinstance(h, str) and _HEX64.match(h)):
        raise FormatError(f"{w}: latents_sha256 is not a 64-digit lowercase hex digest")
    pid = s.get("platform")
    if pid is not None and not (isinstance(pid, str) and _PLATFORM_ID.match(pid)):
        raise FormatError(f"{w}: platform is not a platform id like 'pf-3a1f40d8932c'")


def manifest_problems(m: dict) -> list[tuple[int | None, str]]:
    """What a valid manifest's fields must agree on: (shard or None, problem) for each disagreement
    (compared a column at a time, in shard order)."""
    import numpy as np

    out: list[tuple[int | None, str]] = []
    ids, firsts, counts, nbytes, paths, lat, pids = columns_of(
        m["shards"], "shard", "first_row", "samples", "bytes", "path", "latents_sha256", "platform")
    order = np.argsort(ids, kind="stable")
    ids, firsts, counts, nbytes = ids[order], firsts[order], counts[order], nbytes[order]
    listed = ids.tolist()
    if listed != list(range(len(listed))):
        missing = sorted(set(range(len(listed))) - set(listed))
        out.append((None, f"shard ids are not 0..{len(listed) - 1}: missing {missing[:10]}, listed {listed[:10]}"
                          f"{'...' if len(listed) > 10 else ''}"))
    expected = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(listed) else counts
    bad_first, bad_bytes = firsts != expected, counts * MIN_SAMPLE_BYTES > nbytes
    for i in np.flatnonzero(bad_first | bad_bytes).tolist():
        k = listed[i]
        if bad_first[i]:
            out.append((k, f"shard {k} ({paths[order[i]]}): first_row {firsts[i]}, expected {expected[i]}"))
        if bad_bytes[i]:
            out.append((k, f"manifest: shard {k} declares {counts[i]} samples in "
                           f"{nbytes[i]} bytes (a sample takes at least {MIN_SAMPLE_BYTES})"))
    table = m.get("platforms") or {}
    for pid, rec in table.items():
        if platform_record_id(rec) != pid:
            out.append((None, f"manifest: platforms.{pid} is not the content id of its record (edited?)"))
    unknown = sorted(set(pids) - {None} - set(table))
    if unknown:
        out.append((None, f"manifest: shards name platform(s) {unknown[:3]} that platforms does not list"))
    latents = m.get("latents") or {}
    latents_sha = sha256_bytes("".join(lat[i] or "" for i in order.tolist()).encode())
    if latents.get("sha256_of_shard_hashes") not in (None, latents_sha):
        out.append((None, "manifest: latents.sha256_of_shard_hashes does not match the shards' latents_sha256"))
    if content_id(m, order) != m["dataset_id"]:
        out.append((None, f"manifest: dataset_id {m['dataset_id']} is not the content hash of its shards"))
    return out


def content_id(m: dict, order=None) -> str:
    """The dataset id of a manifest's shard entries (`names.dataset_id`, entries in shard order), from columns."""
    import numpy as np

    paths, sha, counts, isha, ids = columns_of(m["shards"], "path", "sha256", "samples", "index_sha256", "shard")
    order = np.argsort(ids, kind="stable") if order is None else order
    if (order[1:] < order[:-1]).any():  # entries listed out of shard order
        pick = order.tolist()
        paths, sha, isha = ([col[i] for i in pick] for col in (paths, sha, isha))
        counts = counts[order]
    return dataset_id_of_columns(paths, sha, counts.tolist(), isha, format_version=m["format_version"],
                                 latents_sha256=(m.get("latents") or {}).get("sha256_of_shard_hashes"))


def check_manifest(m: dict, where: str) -> None:
    """Refuse (FormatError, one line) a manifest whose fields disagree, as `factory verify` would."""
    problems = manifest_problems(m)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise FormatError(f"{where}: {problems[0][1]}{more}; factory verify lists every problem")


# ---------------------------------------------------------------- manifests, views and maps

def read_json(url: str, what: str = "file") -> dict:
    """A JSON object from elsewhere, within the size and depth limits (``schema.loads_json``)."""
    return json_object(read_limited(url, what), f"{what} {url}")


def read_limited(url: str, what: str) -> bytes:
    """The bytes of a manifest, view or other JSON file, at most MAX_JSON_BYTES; FormatError otherwise."""
    try:
        return read_bytes(url, MAX_JSON_BYTES)
    except FileNotFoundError:
        raise FormatError(f"{what} not found: {url}") from None
    except OSError as e:
        raise FormatError(f"cannot read {what} {url}: {e}") from None


def json_object(data: bytes, what: str) -> dict:
    """A JSON object parsed within the limits (``loads_json``); FormatError for any other value."""
    obj = loads_json(data, what)
    if not isinstance(obj, dict):
        raise FormatError(f"{what} must hold a JSON object, got {type(obj).__name__}")
    return obj


def _require(obj: dict, key: str, types, where: str):
    if key not in obj:
        raise FormatError(f"{where}: missing field {key!r}")
    val = obj[key]
    if not isinstance(val, types) or (isinstance(val, bool) and bool not in _as_tuple(types)):
        raise FormatError(f"{where}: field {key!r} has type {type(val).__name__}")
    return val


def _as_tuple(t):
    return t if isinstance(t, tuple) else (t,)


def check_version(obj: dict, where: str) -> int:
    """The object's format_version when this code reads it, else FormatError."""
    version = obj.get("format_version")
    if version not in READ_VERSIONS or isinstance(version, bool):
        raise FormatError(f"{where}: format_version {version!r} is not supported (this code reads "
                          f"{', '.join(map(str, READ_VERSIONS))})")
    return version


def has_offsets(manifest: dict) -> bool:
    """Whether a dataset's index records each sample's byte range (format version 2 on)."""
    return manifest.get("format_version", 1) >= 2


def validate_manifest(obj: Any, where: str = "manifest", allow_remote_shards: bool = False) -> dict:
    """Check a dataset manifest from an untrusted source; return it unchanged or raise FormatError."""
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: manifest must be a JSON object")
    kind = obj.get("kind")
    if kind != DATASET_KIND:
        raise FormatError(f"{where}: kind is {kind!r}, expected {DATASET_KIND!r}")
    check_version(obj, where)
    _require(obj, "dataset_id", str, where)
    _require(obj, "samples", int, where)
    _require(obj, "dim_z", int, where)
    check_manifest_fields(obj, where)
    if isinstance(obj.get("shards"), ShardTable):
        total = _table_total(obj["shards"], f"{where} ({SHARD_TABLE})", allow_remote_shards)
    else:
        shards = _require(obj, "shards", list, where)
        total = _shards_total(shards, allow_remote_shards)
        if total is None:  # some entry fails: the entry-by-entry check names it
            total = _check_shards(shards, where, allow_remote_shards)
    if total != obj["samples"]:
        raise FormatError(f"{where}: samples is {obj['samples']} but the shards hold {total}")
    return obj


def _shards_total(shards: list, allow_remote_shards: bool) -> int | None:
    """The samples of a shard list that passes every check of `_check_shards` (a column at a time:
    100,000 entries in a fraction of a second), or None when some entry may not (or does not)."""
    if not shards:
        return 0
    if set(map(type, shards)) != {dict}:
        return None
    try:
        ids, paths, indexes, sha, isha, n, b, first = (tuple(map(operator.itemgetter(k), shards)) for k in _SHARD_KEYS)
    except KeyError:
        return None
    if set(map(type, ids + n + b + first)) != {int} or len(set(ids)) != len(ids):
        return None
    if min(n) < 0 or min(b) < 0 or min(first) < 0 or max(map(int.__add__, first, n)) > MAX_SAMPLES:
        return None
    if set(map(type, paths + indexes)) != {str} or not check_plain_paths(tuple(set(paths + indexes))):
        return None
    lat = tuple(map(_LATENTS_OF, shards))
    if None in lat:
        lat = tuple(h for h in lat if h is not None)
    if not _all_hex64(sha + isha + lat):
        return None
    platforms = tuple(map(_PLATFORM_OF, shards))
    if set(map(type, platforms)) - {str, type(None)}:
        return None
    if not all(_PLATFORM_ID.match(p) for p in set(platforms) - {None}):
        return None
    return sum(n)


_SHARD_KEYS = ("shard", "path", "index", "sha256", "index_sha256", "samples", "bytes", "first_row")
_LATENTS_OF = operator.methodcaller("get", "latents_sha256")
_SAMPLES_OF = operator.methodcaller("get", "samples")
_PLATFORM_OF = operator.methodcaller("get", "platform")


def _table_total(table: ShardTable, where: str, allow_remote_shards: bool) -> int:
    """The samples of a shard table (`format.shardtable`): checked as columns when it was read; otherwise
    entry by entry (naming the first bad entry), then its column types."""
    if table.checked_total is not None:
        return table.checked_total
    total = _check_shards(table.raw_entries(), where, allow_remote_shards)
    problem = schema_problem(table)
    if problem is not None:
        raise FormatError(f"{where}: {problem}")
    table.checked_total = total
    return total


def _all_hex64(digests: tuple) -> bool:
    """Whether every value is a string of exactly 64 lowercase hex digits."""
    if set(map(type, digests)) - {str} or set(map(len, digests)) - {64}:
        return False
    try:
        return not "".join(digests).encode("ascii").translate(None, _HEX_DIGITS)
    except UnicodeEncodeError:
        return False


def _check_shards(shards: list, where: str, allow_remote_shards: bool) -> int:
    """Every shard entry in turn (types, paths, digests, ranges); the first problem as FormatError."""
    total = 0
    seen = set()
    for i, s in enumerate(shards):
        w = f"{where}: shards[{i}]"
        if not isinstance(s, dict):
            raise FormatError(f"{w} must be an object")
        sid = _require(s, "shard", int, w)
        if sid in seen:
            raise FormatError(f"{w}: shard id {sid} listed twice")
        seen.add(sid)
        check_relative_path(_require(s, "path", str, w), w, allow_remote_shards)
        check_relative_path(_require(s, "index", str, w), w, allow_remote_shards)
        for h in ("sha256", "index_sha256"):
            if not _HEX64.match(str(_require(s, h, str, w))):
                raise FormatError(f"{w}: {h} is not a 64-digit lowercase hex digest")
        n = _require(s, "samples", int, w)
        b = _require(s, "bytes", int, w)
        first = _require(s, "first_row", int, w)
        if n < 0 or b < 0 or first < 0:
            raise FormatError(f"{w}: samples, bytes and first_row must be >= 0")
        check_shard_fields(s, w)
        total += n
    return total


def validate_maps(obj: Any, where: str = "maps") -> dict:
    """Check a teacher-maps manifest (maps.json); return it unchanged or raise FormatError."""
    if not isinstance(obj, dict) or obj.get("kind") != MAPS_KIND:
        raise FormatError(f"{where}: not a teacher-maps manifest (kind {MAPS_KIND!r}); make one with trainers relabel")
    check_version(obj, where)
    parent = _require(obj, "parent", dict, where)
    _require(parent, "dataset_id", str, f"{where}: parent")
    teacher = _require(obj, "teacher", dict, where)
    if not _HEX64.match(str(_require(teacher, "sha256", str, f"{where}: teacher"))):
        raise FormatError(f"{where}: teacher sha256 is not a 64-digit lowercase hex digest")
    _require(obj, "samples", int, where)
    total = 0
    for i, p in enumerate(_require(obj, "parts", list, where)):
        w = f"{where}: parts[{i}]"
        if not isinstance(p, dict):
            raise FormatError(f"{w} must be an object")
        _require(p, "shard", int, w)
        check_relative_path(_require(p, "path", str, w), w)
        if not _HEX64.match(str(_require(p, "sha256", str, w))):
            raise FormatError(f"{w}: sha256 is not a 64-digit lowercase hex digest")
        total += _require(p, "samples", int, w)
    if total != obj["samples"]:
        raise FormatError(f"{where}: samples is {obj['samples']} but the parts hold {total}")
    return obj


def validate_view(obj: Any, where: str = "view") -> dict:
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: view must be a JSON object")
    if obj.get("kind") != VIEW_KIND:
        raise FormatError(f"{where}: kind is {obj.get('kind')!r}, expected {VIEW_KIND!r}")
    version = check_version(obj, where)
    _require(obj, "view_id", str, where)
    parent = _require(obj, "parent", dict, where)
    _require(parent, "dataset_id", str, f"{where}: parent")
    _require(parent, "url", str, f"{where}: parent")
    _require(obj, "samples", int, where)
    total = check_accepted(_require(obj, "accepted", dict, where), version, where)
    if total != obj["samples"]:
        raise FormatError(f"{where}: samples is {obj['samples']} but accepted holds {total}")
    return obj

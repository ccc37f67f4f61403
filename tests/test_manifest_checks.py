"""The shard list of a manifest checked a column at a time, the JSON depth counted in one pass, and a
manifest's bytes checked once per process: each refuses what the entry-by-entry check refuses."""
import json
import random

import pytest

from factory import format as fmt
from factory.format.schema import json_depth


def _manifest(k: int = 3) -> dict:
    shards = [{"shard": i, "path": fmt.shard_name(i), "index": fmt.index_name(i), "samples": 2, "bytes": 4096,
               "first_row": 2 * i, "sha256": fmt.sha256_bytes(b"s%d" % i), "index_sha256": fmt.sha256_bytes(b"i%d" % i),
               "latents_sha256": fmt.sha256_bytes(b"l%d" % i)} for i in range(k)]
    return {"kind": fmt.DATASET_KIND, "format_version": 2, "dataset_id": "ds-x", "samples": 2 * k, "dim_z": 8,
            "shards": shards}


BAD_ENTRIES = [("shard", True), ("shard", "1"), ("shard", 0), ("path", "../x.tar"), ("path", "/etc/passwd"),
               ("path", ""), ("path", 7), ("index", "a/../../b"), ("index", "s3://b/x"), ("sha256", "A" * 64),
               ("sha256", "0" * 63), ("index_sha256", "g" * 64), ("latents_sha256", "é" * 64),
               ("latents_sha256", 5), ("latents_sha256", {"a": 1}), ("sha256", ["0" * 64]), ("path", {}),
               ("index", [1]), ("shard", [0]), ("samples", {}), ("samples", -1), ("bytes", -5), ("first_row", 1 << 41), ("samples", 2.0),
               ("platform", "pf-xyz"), ("platform", 3), ("platform", {"a": 1}), ("platform", [1]), ("bytes", False)]


@pytest.mark.parametrize("key,value", BAD_ENTRIES)
def test_each_bad_shard_field_is_refused_naming_its_entry(key, value):
    m = _manifest()
    assert fmt.validate_manifest(json.loads(json.dumps(m))) is not None
    m["shards"][1][key] = value
    with pytest.raises(fmt.FormatError, match=r"shards\[1\]"):
        fmt.validate_manifest(m)


@pytest.mark.parametrize("key", ["shard", "path", "index", "sha256", "index_sha256", "samples", "bytes",
                                 "first_row"])
def test_a_missing_shard_field_is_refused(key):
    m = _manifest()
    del m["shards"][2][key]
    with pytest.raises(fmt.FormatError, match=rf"shards\[2\]: missing field '{key}'"):
        fmt.validate_manifest(m)


def test_remote_paths_pass_only_when_allowed_and_totals_are_checked():
    m = _manifest()
    m["shards"][0]["path"] = "s3://bucket/0.tar"
    with pytest.raises(fmt.FormatError, match="remote URL"):
        fmt.validate_manifest(m)
    assert fmt.validate_manifest(m, allow_remote_shards=True) is m
    m["samples"] += 1
    with pytest.raises(fmt.FormatError, match="but the shards hold 6"):
        fmt.validate_manifest(m, allow_remote_shards=True)


def _depth_by_strings(data: bytes) -> int:
    """Depth counted by walking the text character by character, skipping strings (escapes included)."""
    depth = peak = 0
    inside = escaped = False
    for ch in data.decode("latin-1"):
        if inside:
            escaped, inside = (not escaped and ch == "\\"), inside if (escaped or ch != '"') else False
        elif ch == '"':
            inside = True
        elif ch in "[{":
            depth += 1
            peak = max(peak, depth)
        elif ch in "]}":
            depth -= 1
    return peak if not inside else -1  # -1: a string left open (not JSON)


def test_json_depth_matches_a_character_walk():
    rnd = random.Random(4)
    compared = 0
    for _ in range(3000):
        text = bytes(rnd.choice(b'[]{}"a,:\\ ') for _ in range(rnd.randint(0, 40)))
        walked = _depth_by_strings(text)
        if walked >= 0:
            assert json_depth(text) == walked, text
            compared += 1
    assert compared > 1000
    deep = b'{"a": "[[[[", "b": ' + b"[" * 70 + b"]" * 70 + b"}"
    assert json_depth(deep) == 71 == _depth_by_strings(deep)
    with pytest.raises(fmt.FormatError, match="nests"):
        fmt.loads_json(deep, "manifest")


def test_a_manifest_changed_on_disk_is_checked_again(tmp_path):
    m = _manifest()
    (tmp_path / fmt.MANIFEST).write_text(json.dumps(m))
    res = fmt.open_dataset(str(tmp_path))
    assert res.manifest_sha256 == fmt.sha256_bytes((tmp_path / fmt.MANIFEST).read_bytes())
    assert fmt.open_dataset(str(tmp_path)).manifest == m  # same bytes: parsed again, equal
    m["shards"][1]["path"] = "../../escape.tar"
    (tmp_path / fmt.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(fmt.FormatError, match="leaves the dataset folder"):
        fmt.open_dataset(str(tmp_path))


def test_plain_paths_checked_in_one_pass_follow_the_path_rule():
    """`check_plain_paths` (joined text, byte searches) and `plain_concat` (a shard table's string buffers)
    accept exactly the paths of the rule: names of letters, digits, ``_.-`` joined by single slashes, the first
    not starting with a dot, none ``.`` or ``..``."""
    import re

    import numpy as np

    from factory.format.paths import check_plain_paths, plain_concat

    rule = re.compile(r"(?!\.)[A-Za-z0-9_-][A-Za-z0-9_.-]*(?:/(?!\.\.?(?:/|\Z))[A-Za-z0-9_.-]+)*\Z")
    rng = random.Random(3)
    seen = {True: 0, False: 0}
    for _ in range(20000):
        paths = ["".join(rng.choice("ab./-_\n:é") for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(1, 3))]
        want = all(rule.match(p) for p in paths)
        seen[want] += 1
        assert check_plain_paths(tuple(paths)) == want, paths
        data = "".join(paths).encode()
        offsets = np.cumsum([0] + [len(p.encode()) for p in paths]).astype(np.int64)
        assert plain_concat(data, offsets) == want, paths
    assert min(seen.values()) > 500


def test_the_dataset_id_from_columns_is_the_canonical_json_one():
    """`manifest_problems` recomputes the id from columns (`dataset_id_of_columns`): the same digest as
    `dataset_id` over entry dicts, for any strings (quotes, backslashes, non-ASCII, remote URLs)."""
    rng = random.Random(5)
    for k in (0, 1, 7, 300):
        shards = [{"path": "".join(rng.choice('ab/."\\é\n') for _ in range(rng.randint(1, 9))),
                   "sha256": fmt.sha256_bytes(b"%d" % i), "samples": rng.randint(0, 1 << 40),
                   "index_sha256": rng.choice(["x", fmt.sha256_bytes(b"i")])} for i in range(k)]
        for latents, version in ((None, 2), (fmt.sha256_bytes(b"l"), 4)):
            cols = [[s[c] for s in shards] for c in ("path", "sha256", "samples", "index_sha256")]
            assert fmt.dataset_id_of_columns(*cols, latents_sha256=latents, format_version=version) \
                == fmt.dataset_id(shards, latents, version)
    m = _manifest(5)
    m["shards"].reverse()  # listed out of shard order: the id is over shard order
    m["dataset_id"] = fmt.dataset_id(sorted(m["shards"], key=lambda s: s["shard"]), None, 2)
    assert not [p for p in fmt.manifest_problems(m) if "content hash" in p[1]]
    m["dataset_id"] = fmt.dataset_id(m["shards"], None, 2)
    assert [p for p in fmt.manifest_problems(m) if "content hash" in p[1]]

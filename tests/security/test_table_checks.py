"""The shard table (format version 4) from elsewhere: a changed byte, a bad value in any column, a manifest
whose layout disagrees with its table are one line naming the problem (the entry, with the JSON list's
messages) before anything is read; a signature covers the table."""
from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pytest
from helpers import cli, one_line_error, rewrite_shard_table

from factory import format as fmt


@pytest.fixture()
def ds(table_dataset, tmp_path) -> str:
    return shutil.copytree(table_dataset, str(tmp_path / "ds"))


def stored(root) -> dict:
    return json.load(open(os.path.join(root, fmt.MANIFEST)))


def test_a_changed_byte_in_the_table_is_one_line(ds):
    path = os.path.join(ds, fmt.SHARD_TABLE)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 1
    open(path, "wb").write(bytes(data))
    for command in ("info", "verify", "filter"):
        extra = ["--max-fg", "0.5", "--out", os.path.join(ds, "..", "v.json")] if command == "filter" else []
        one_line_error(cli(command, ds, *extra), "shards.parquet does not match the manifest's shard_table.sha256")
    open(path, "wb").write(bytes(data[:-1]))
    one_line_error(cli("info", ds), f"has {len(data) - 1} bytes, the manifest says {len(data)}")
    os.remove(path)
    one_line_error(cli("info", ds), "shard table missing")


def _set(column: str, i: int, value, typ=None):
    def edit(t):
        vals = t.column(column).to_pylist()
        vals[i] = value
        return t.set_column(t.column_names.index(column), column, pa.array(vals, typ or t.schema.field(column).type))
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("samples", 2, -1), "shards[2]: samples, bytes and first_row must be >= 0"),
    (_set("shard", 3, 1), "shards[3]: shard id 1 listed twice"),
    (_set("path", 1, "../../etc/passwd"), "shards[1]: shard path '../../etc/passwd' leaves the dataset folder"),
    (_set("index", 4, "/etc/passwd"), "shards[4]: shard path '/etc/passwd' is absolute"),
    (_set("path", 0, "s3://bucket/x.tar"), "shards[0]: shard path 's3://bucket/x.tar' is a remote URL"),
    (_set("sha256", 5, None), "shards[5]: missing field 'sha256'"),
    (_set("platform", 2, "pf-nothex"), "shards[2]: platform is not a platform id"),
    (_set("first_row", 1, 1 << 41), "shards[1]: rows 2199023255552.. + 4 exceed"),
    (lambda t: t.set_column(3, "sha256", pa.array([b"x" * 31] * t.num_rows, pa.binary(31))),
     "shards[0]: sha256 is not a 64-digit lowercase hex digest"),
    (lambda t: t.set_column(0, "shard", t.column("shard").cast(pa.int32())),
     "column 'shard' has type int32, expected int64"),
    (lambda t: t.append_column("command", pa.array(["rm -rf"] * t.num_rows)),
     "column 'command' is not a shard table column"),
    (lambda t: t.slice(0, 5), "samples is 24 but the shards hold 20"),
])
def test_bad_column_values_are_refused_naming_the_entry(ds, edit, message):
    rewrite_shard_table(ds, edit)
    with pytest.raises(fmt.FormatError, match=None) as e:
        fmt.open_dataset(ds)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    one_line_error(cli("info", ds), message)


def test_the_manifest_and_its_table_must_agree_on_the_layout(ds):
    m = stored(ds)
    mpath = os.path.join(ds, fmt.MANIFEST)
    cases = [
        (dict(m, shards=[]), "lists no shards itself"),
        (dict(m, format_version=3), "'shard_table' section needs format version 4"),
        ({k: v for k, v in m.items() if k != fmt.SHARD_TABLE_SECTION}, "manifest names none"),
        (dict(m, shard_table=dict(m["shard_table"], path="../shards.parquet")), "shard_table.path is"),
        (dict(m, shard_table=dict(m["shard_table"], rows=5)), "has 6 rows, the manifest says 5"),
        (dict(m, shard_table=dict(m["shard_table"], bytes=1 << 40)), "shard_table.bytes must be an integer"),
    ]
    for obj, message in cases:
        open(mpath, "w").write(json.dumps(obj))
        one_line_error(cli("info", ds), message)


def test_signing_covers_the_table(ds, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    assert cli("sign", ds, "--key", priv).exit_code == 0
    r = cli("verify", ds, "--trust", pub)
    assert r.exit_code == 0 and "trusted key" in r.output, r.output
    # a table changed after signing, its section resealed: the manifest's bytes changed, the signature fails
    rewrite_shard_table(ds, _set("bytes", 1, 999_999))
    one_line_error(cli("verify", ds, "--trust", pub), "does not cover this manifest")

"""Signed datasets: `factory sign`, `factory verify --trust`, `factory info`'s signer line."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from helpers import cli, downgrade, one_line_error

from factory.dataset.signing import SIGNATURES, fingerprint


def _write_keypair(tmp_path, name: str, key=None):
    key = key or ed25519.Ed25519PrivateKey.generate()
    priv = tmp_path / f"{name}.pem"
    pub = tmp_path / f"{name}.pub.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


@pytest.fixture()
def ds(small_dataset, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(small_dataset, out)
    return out


@pytest.fixture()
def keys(tmp_path):
    return {"a": _write_keypair(tmp_path, "a"), "b": _write_keypair(tmp_path, "b")}


def test_signed_dataset_passes_with_its_key_and_keeps_its_id(ds, keys):
    before = json.loads((ds / "manifest.json").read_text())["dataset_id"]
    r = cli("sign", ds, "--key", keys["a"][0], "--signer", "team A")
    assert r.exit_code == 0, r.output
    assert (ds / SIGNATURES).exists()
    r = cli("verify", ds, "--trust", keys["a"][1])
    assert r.exit_code == 0, r.output
    assert "signed by team A (trusted key" in r.output and f"OK {ds}: {before}" in r.output
    # the signature file changes neither the id nor a plain verify
    r = cli("verify", ds)
    assert r.exit_code == 0 and before in r.output, r.output
    # repeated --trust: any one trusted key suffices
    assert cli("verify", ds, "--trust", keys["b"][1], "--trust", keys["a"][1]).exit_code == 0
    d = json.loads(cli("verify", ds, "--trust", keys["a"][1], "--json").output)
    assert d["ok"] and d["signed_by"]["signer"] == "team A" and d["dataset_id"] == before


def test_manifest_swapped_between_check_and_verify_fails(ds, keys, tmp_path, monkeypatch):
    """A store that serves the signed manifest to the signature check and another to the verify's read."""
    from factory.dataset import signing

    cli("sign", ds, "--key", keys["a"][0], "--signer", "team A")
    other = tmp_path / "other"
    assert cli("generate", "--generator", "shapes", "--n", "20", "--shard-size", "10", "--resolution", "32",
               "--workers", "0", "--quiet", "--out", other).exit_code == 0
    checked = signing.check_trust

    def check_then_swap(url, trusted):
        entry = checked(url, trusted)
        shutil.rmtree(ds)
        shutil.copytree(other, ds)
        return entry

    monkeypatch.setattr(signing, "check_trust", check_then_swap)
    one_line_error(cli("verify", ds, "--trust", keys["a"][1]), "the manifest changed while it was checked")


def test_other_key_fails_in_one_line(ds, keys):
    cli("sign", ds, "--key", keys["a"][0], "--signer", "team A")
    one_line_error(cli("verify", ds, "--trust", keys["b"][1]), "signed only by keys you do not trust", "team A")


def test_unsigned_dataset_fails_trust_in_one_line(ds, keys):
    one_line_error(cli("verify", ds, "--trust", keys["a"][1]), "is not signed")


@pytest.mark.parametrize("edit", ["whitespace", "spec", "shard_hash", "signer_name"])
def test_any_edit_after_signing_fails(ds, keys, edit):
    cli("sign", ds, "--key", keys["a"][0], "--signer", "team A")
    mpath, spath = ds / "manifest.json", ds / SIGNATURES
    m = json.loads(mpath.read_text())
    if edit == "whitespace":
        mpath.write_text(mpath.read_text() + " ")
    elif edit == "spec":
        m["spec"]["cc_ratio"] = 0.3
        mpath.write_text(json.dumps(m))
    elif edit == "shard_hash":  # a shard swapped for another whose hash the forger wrote into the manifest
        m["shards"][1]["sha256"] = "0" * 64
        mpath.write_text(json.dumps(m))
    else:  # the signer's name is signed too
        doc = json.loads(spath.read_text())
        doc["signatures"][0]["signer"] = "team B"
        spath.write_text(json.dumps(doc))
    r = cli("verify", ds, "--trust", keys["a"][1])
    one_line_error(r, "does not cover this manifest")
    if edit in ("whitespace", "spec"):
        assert "changed after it was signed" in r.output


def test_forged_entry_under_a_trusted_fingerprint_fails(ds, keys, tmp_path):
    """An entry that claims the trusted key (its fingerprint and public key) but is signed by another."""
    cli("sign", ds, "--key", keys["b"][0], "--signer", "forger")
    doc = json.loads((ds / SIGNATURES).read_text())
    pub_a = serialization.load_pem_public_key(keys["a"][1].read_bytes())
    doc["signatures"][0]["fingerprint"] = fingerprint(pub_a)
    doc["signatures"][0]["public_key"] = keys["a"][1].read_text()
    (ds / SIGNATURES).write_text(json.dumps(doc))
    one_line_error(cli("verify", ds, "--trust", keys["a"][1]), "does not cover this manifest")


def test_two_signers_and_resigning(ds, keys):
    assert cli("sign", ds, "--key", keys["a"][0]).exit_code == 0
    assert cli("sign", ds, "--key", keys["b"][0], "--signer", "team B").exit_code == 0
    assert cli("sign", ds, "--key", keys["a"][0], "--signer", "team A").exit_code == 0  # replaces a's entry
    doc = json.loads((ds / SIGNATURES).read_text())
    assert [e["signer"] for e in doc["signatures"]] == ["team B", "team A"]
    for k in ("a", "b"):
        r = cli("verify", ds, "--trust", keys[k][1])
        assert r.exit_code == 0 and f"signed by team {k.upper()}" in r.output, r.output


def test_info_shows_who_signed(ds, keys):
    r = cli("info", ds, "--no-stats")
    assert "signed by    nobody" in r.output, r.output
    cli("sign", ds, "--key", keys["a"][0], "--signer", "team A <a@example.org>")
    fp = fingerprint(serialization.load_pem_public_key(keys["a"][1].read_bytes()))
    r = cli("info", ds, "--no-stats")
    assert f"signed by    team A <a@example.org>  key {fp}  (signature matches this manifest" in r.output, r.output
    d = json.loads(cli("info", ds, "--json", "--no-stats").output)
    assert d["signatures"] == [{"signer": "team A <a@example.org>", "fingerprint": fp, "matches_manifest": True}]
    (ds / "manifest.json").write_text((ds / "manifest.json").read_text() + "\n")
    assert "signature does NOT match this manifest" in cli("info", ds, "--no-stats").output


def test_view_is_checked_against_its_signed_dataset(ds, keys, tmp_path):
    cli("sign", ds, "--key", keys["a"][0], "--signer", "team A")
    view = tmp_path / "v.json"
    assert cli("filter", ds, "--max-fg", "0.5", "--out", view).exit_code == 0
    r = cli("verify", view, "--trust", keys["a"][1])
    assert r.exit_code == 0 and "signed by team A" in r.output, r.output
    one_line_error(cli("sign", view, "--key", keys["a"][0]), "is a view; sign its dataset")


def _bad_key(tmp_path, keys, case):
    if case == "missing":
        return "sign", tmp_path / "nope.pem", "not found"
    if case == "junk":
        p = tmp_path / "junk.pem"
        p.write_text("-----BEGIN PRIVATE KEY-----\nnot base64 at all!\n-----END PRIVATE KEY-----\n")
        return "sign", p, "is not a PEM private key"
    if case == "public_as_key":
        return "sign", keys["a"][1], "holds a public key"
    if case == "private_as_trust":
        return "verify", keys["a"][0], "is a private key; pass its public key"
    if case == "ecdsa":
        priv, pub = _write_keypair(tmp_path, "ec", ec.generate_private_key(ec.SECP256R1()))
        return "sign", priv, "is not Ed25519"
    if case == "ecdsa_trust":
        priv, pub = _write_keypair(tmp_path, "ec", ec.generate_private_key(ec.SECP256R1()))
        return "verify", pub, "is not Ed25519"
    if case == "encrypted":
        p = tmp_path / "enc.pem"
        p.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw")))
        return "sign", p, "is encrypted"
    if case == "binary":
        p = tmp_path / "bin.pem"
        p.write_bytes(bytes(range(256)) * 4)
        return "verify", p, "is not a PEM public key"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "junk", "public_as_key", "private_as_trust", "ecdsa", "ecdsa_trust",
                                  "encrypted", "binary"])
def test_bad_key_file_is_one_line(ds, keys, tmp_path, case):
    command, path, fragment = _bad_key(tmp_path, keys, case)
    cli("sign", ds, "--key", keys["a"][0])
    flag = "--key" if command == "sign" else "--trust"
    one_line_error(cli(command, ds, flag, path), fragment, str(path))


@pytest.mark.parametrize("content", ["{", '{"kind": "factory-signatures", "version": 1, "signatures": [5]}',
                                     '{"kind": "x"}', '[' * 5000 + ']' * 5000])
def test_malformed_signatures_file_is_one_line(ds, keys, content):
    (ds / SIGNATURES).write_text(content)
    one_line_error(cli("verify", ds, "--trust", keys["a"][1]), SIGNATURES)
    r = cli("info", ds, "--no-stats")  # info still describes the dataset, naming the problem
    assert r.exit_code == 0 and SIGNATURES in r.output, r.output


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_keys_written_by_openssl(ds, tmp_path):
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", priv], check=True)
    subprocess.run(["openssl", "pkey", "-in", priv, "-pubout", "-out", pub], check=True)
    r = cli("sign", ds, "--key", priv, "--signer", "ops")
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", pub, "-outform", "DER"], check=True,
                         capture_output=True).stdout
    import hashlib

    assert hashlib.sha256(der).hexdigest() in r.output  # the fingerprint openssl | sha256sum prints
    assert cli("verify", ds, "--trust", pub).exit_code == 0


@pytest.mark.s3
def test_sign_and_verify_on_s3(s3_server, keys, tmp_path):
    root = f"s3://{s3_server['bucket']}/signed-v1"
    r = cli("generate", "--generator", "shapes", "--n", "20", "--shard-size", "10", "--resolution", "32",
            "--workers", "0", "--quiet", "--out", root)
    assert r.exit_code == 0, r.output
    r = cli("sign", root, "--key", keys["a"][0], "--signer", "team A")
    assert r.exit_code == 0, r.output
    assert s3_server["fs"].exists(f"{s3_server['bucket']}/signed-v1/{SIGNATURES}")
    r = cli("verify", root, "--trust", keys["a"][1])
    assert r.exit_code == 0 and "signed by team A" in r.output, r.output
    one_line_error(cli("verify", root, "--trust", keys["b"][1]), "do not trust")
    assert "team A" in cli("info", root, "--no-stats").output
    s3_server["fs"].pipe(f"{s3_server['bucket']}/signed-v1/manifest.json",
                         s3_server["fs"].cat(f"{s3_server['bucket']}/signed-v1/manifest.json") + b" ")
    one_line_error(cli("verify", root, "--trust", keys["a"][1]), "changed after it was signed")


def test_another_dataset_written_over_a_signed_one_drops_the_signature(keys, tmp_path):
    root = tmp_path / "d"
    gen = ["generate", "--generator", "shapes", "--n", "20", "--shard-size", "10", "--resolution", "32",
           "--workers", "0", "--quiet", "--out", root]
    assert cli(*gen).exit_code == 0
    assert cli("sign", root, "--key", keys["a"][0]).exit_code == 0
    r = cli(*gen[:4], "30", *gen[5:], "--overwrite")
    assert r.exit_code == 0, r.output
    assert not (root / SIGNATURES).exists()
    one_line_error(cli("verify", root, "--trust", keys["a"][1]), "is not signed")


def test_upgrade_removes_the_signatures_of_the_old_manifest(ds, keys):
    """`upgrade` rewrites the manifest: the old signatures no longer apply; it says so in one line and removes
    them (`info` shows no signer that does not sign it); a killed run, run again, removes those left behind."""
    downgrade(str(ds))
    cli("sign", ds, "--key", keys["a"][0], "--signer", "team A")
    old_doc = (ds / SIGNATURES).read_bytes()
    r = cli("upgrade", ds)
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and "tars untouched" in lines[0], r.stdout
    assert lines[1].startswith("old signatures removed (team A (key ") and "no longer apply; sign again" in lines[1]
    assert not (ds / SIGNATURES).exists()
    assert "signed by    nobody" in cli("info", ds, "--no-stats").output
    one_line_error(cli("verify", ds, "--trust", keys["a"][1]), "is not signed")
    # a run killed after its manifest left the old signatures beside it, and b signed the new manifest since
    cli("sign", ds, "--key", keys["b"][0], "--signer", "team B")
    doc = json.loads((ds / SIGNATURES).read_text())
    doc["signatures"] += json.loads(old_doc)["signatures"]
    (ds / SIGNATURES).write_text(json.dumps(doc))
    r = cli("upgrade", ds)
    assert r.exit_code == 0 and "nothing to do" in r.output and "old signatures removed (team A (key " in r.output
    assert [e["signer"] for e in json.loads((ds / SIGNATURES).read_text())["signatures"]] == ["team B"]
    assert cli("verify", ds, "--trust", keys["b"][1]).exit_code == 0
    r = cli("upgrade", ds)
    assert r.exit_code == 0 and "removed" not in r.output, r.output

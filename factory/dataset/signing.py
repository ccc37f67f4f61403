"""Signed datasets: `factory sign` and `factory verify --trust`.

A signature is Ed25519 (the `cryptography` library) over a small statement naming the exact manifest:
the sha256 of `manifest.json`'s bytes, the dataset id and the signer's name. The manifest holds every
file's sha256 (format 4: that of the shard table, `shards.parquet`, which holds the shards') and the spec, so a trusted signature over it vouches for every byte `factory verify`
checks. Signatures live beside the manifest in `signatures.json` (one entry per key; signing again
with the same key replaces its entry); the file is not part of the dataset id, and datasets without it
read and verify as before.

Keys are the files `openssl genpkey -algorithm ed25519 -out KEY.pem` (PKCS8 PEM, unencrypted) and
`openssl pkey -in KEY.pem -pubout -out PUB.pem` write. A key's fingerprint is the sha256 of its
DER public key (`openssl pkey -in PUB.pem -pubin -outform DER | sha256sum`).
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

from factory import format as fmt
from factory.fsio import atomic_write

SIGNATURES = "signatures.json"
SIGNATURES_KIND = "factory-signatures"
STATEMENT_KIND = "factory-dataset-signature"
VERSION = 1
MAX_SIGNATURES = 64
MAX_SIGNER_CHARS = 200
_KEYGEN = "openssl genpkey -algorithm ed25519 -out KEY.pem"
_PUBOUT = "openssl pkey -in KEY.pem -pubout -out PUB.pem"


class SignatureError(fmt.FactoryError):
    """A key file that is not an Ed25519 key, an unreadable signatures file, or no trusted signature."""


# ---------------------------------------------------------------- keys

def _read_key_file(path: str | Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SignatureError(f"{what} {path} not found") from None
    except OSError as e:
        raise SignatureError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > 64 << 10:
        raise SignatureError(f"{what} {path} is {len(data):,} bytes, not a PEM key file")
    return data


def _kind_name(key) -> str:
    return type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("PublicKey", "") or "unknown"


def load_private_key(path: str | Path):
    """The Ed25519 private key in a PEM file; one-line SignatureError for anything else."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

    data = _read_key_file(path, "signing key")
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise SignatureError(f"signing key {path} is encrypted; factory signs with an unencrypted key "
                             f"({_KEYGEN}; keep it private)") from None
    except (ValueError, binascii.Error):
        try:
            load_pem_public_key(data)
        except (ValueError, binascii.Error):
            raise SignatureError(f"signing key {path} is not a PEM private key; make one with: {_KEYGEN}") from None
        raise SignatureError(f"signing key {path} holds a public key; sign with its private key "
                             f"(the file {_KEYGEN} wrote)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"signing key {path} is not Ed25519 ({_kind_name(key)}); make one with: {_KEYGEN}")
    return key


def load_public_key(path: str | Path):
    """The Ed25519 public key in a PEM file; one-line SignatureError for anything else."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

    data = _read_key_file(path, "trusted key")
    try:
        key = load_pem_public_key(data)
    except (ValueError, binascii.Error):
        try:
            load_pem_private_key(data, password=None)
        except (TypeError, ValueError, binascii.Error):
            raise SignatureError(f"trusted key {path} is not a PEM public key; the signer makes it with: "
                                 f"{_PUBOUT}") from None
        raise SignatureError(f"trusted key {path} is a private key; pass its public key ({_PUBOUT}) and keep "
                             f"the private one with its owner") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"trusted key {path} is not Ed25519 ({_kind_name(key)}); factory signatures are "
                             f"Ed25519 ({_KEYGEN})")
    return key


def public_pem(public_key) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def fingerprint(public_key) -> str:
    """sha256 of the DER public key, hex (what `openssl pkey -pubin -outform DER | sha256sum` prints)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return fmt.sha256_bytes(public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


# ---------------------------------------------------------------- statements and the signatures file

def statement(manifest_sha256: str, dataset_id: str, signer: str | None) -> bytes:
    """The bytes a key signs: which manifest (its sha256), which dataset, who says so."""
    return fmt.canonical_json({"kind": STATEMENT_KIND, "version": VERSION, "manifest_sha256": manifest_sha256,
                               "dataset_id": dataset_id, "signer": signer})


@dataclass(frozen=True)
class Signed:
    """The dataset's manifest as signed bytes: where it is, its bytes' sha256, its id, its signatures."""

    root: str
    manifest_sha256: str
    dataset_id: str
    entries: list[dict]


def _signatures_url(root: str) -> str:
    return fmt.join(root, SIGNATURES)


def _check_entry(e, where: str) -> dict:
    if not isinstance(e, dict):
        raise fmt.FormatError(f"{where}: each signature must be a JSON object")
    for k in ("algorithm", "public_key", "fingerprint", "manifest_sha256", "dataset_id", "signature"):
        if not isinstance(e.get(k), str):
            raise fmt.FormatError(f"{where}: a signature lacks the string field {k!r}")
    signer = e.get("signer")
    if signer is not None and (not isinstance(signer, str) or len(signer) > MAX_SIGNER_CHARS):
        raise fmt.FormatError(f"{where}: a signature's signer must be a name of at most {MAX_SIGNER_CHARS} chars")
    return e


def read_signatures(root: str) -> list[dict]:
    """The entries of ``root``'s signatures.json ([] when there is none); FormatError when malformed."""
    url = _signatures_url(root)
    try:
        data = fmt.read_bytes(url, fmt.MAX_JSON_BYTES)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise fmt.FormatError(f"cannot read signatures {url}: {e}") from None
    doc = fmt.loads_json(data, f"signatures {url}")
    if not isinstance(doc, dict) or doc.get("kind") != SIGNATURES_KIND or doc.get("version") != VERSION:
        raise fmt.FormatError(f"{url}: not a factory signatures file (kind {SIGNATURES_KIND!r}, version {VERSION})")
    entries = doc.get("signatures")
    if not isinstance(entries, list) or len(entries) > MAX_SIGNATURES:
        raise fmt.FormatError(f"{url}: 'signatures' must be a list of at most {MAX_SIGNATURES} entries")
    return [_check_entry(e, url) for e in entries]


def open_signed(url: str, res: fmt.Resolved | None = None) -> Signed:
    """The dataset at ``url`` (a view: its parent) with its manifest's exact bytes hashed and its signatures;
    ``res``: ``url`` already opened, whose manifest bytes were hashed as they were read and checked."""
    if res is not None and res.manifest_sha256:
        return Signed(res.root, res.manifest_sha256, res.manifest["dataset_id"], read_signatures(res.root))
    res = fmt.open_dataset(url, allow_remote_shards=True)
    if not res.manifest_sha256:  # a manifest file of another name, or a view of one: its folder's manifest.json
        res = fmt.open_dataset(fmt.join(res.root, fmt.MANIFEST), allow_remote_shards=True)
    return Signed(res.root, res.manifest_sha256, res.manifest["dataset_id"], read_signatures(res.root))


def _decoded_signature(e: dict) -> bytes | None:
    try:
        return base64.b64decode(e["signature"], validate=True)
    except (binascii.Error, ValueError):
        return None


def entry_valid(s: Signed, e: dict, public_key) -> bool:
    """Whether entry ``e`` is ``public_key``'s Ed25519 signature over this manifest's statement."""
    from cryptography.exceptions import InvalidSignature

    sig = _decoded_signature(e)
    if e.get("algorithm") != "ed25519" or sig is None:
        return False
    try:
        public_key.verify(sig, statement(s.manifest_sha256, s.dataset_id, e.get("signer")))
    except InvalidSignature:
        return False
    return True


def _embedded_key(e: dict):
    """The public key an entry carries (for `info`'s self-check only, never for trust), or None."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(e["public_key"].encode())
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return None
    return key if isinstance(key, Ed25519PublicKey) and fingerprint(key) == e["fingerprint"] else None


# ---------------------------------------------------------------- sign, check, describe

def sign_dataset(url: str, key_path: str | Path, signer: str | None = None) -> dict:
    """Sign the dataset at ``url`` with the Ed25519 key in ``key_path``; returns the entry written.
    The manifest's own checks (dataset id recomputed from its shard records) must pass first."""
    key = load_private_key(key_path)
    if signer is not None and (not signer.strip() or len(signer) > MAX_SIGNER_CHARS or "\n" in signer):
        raise SignatureError(f"--signer must be one line of 1 to {MAX_SIGNER_CHARS} characters")
    res = fmt.open_dataset(url, allow_remote_shards=True)
    if res.view is not None:
        raise SignatureError(f"{url} is a view; sign its dataset ({res.root}), which a view is checked against")
    problems = fmt.manifest_problems(res.manifest)
    if problems:
        raise SignatureError(f"{url} is not signed: its manifest fails its own checks ({problems[0][1]}); "
                             f"run factory verify {url}")
    s = open_signed(url, res)
    pub = key.public_key()
    entry = {"algorithm": "ed25519", "signer": signer, "fingerprint": fingerprint(pub), "public_key": public_pem(pub),
             "manifest_sha256": s.manifest_sha256, "dataset_id": s.dataset_id,
             "signature": base64.b64encode(key.sign(statement(s.manifest_sha256, s.dataset_id, signer))).decode()}
    kept = [e for e in s.entries if e["fingerprint"] != entry["fingerprint"]]
    doc = {"kind": SIGNATURES_KIND, "version": VERSION, "signatures": kept + [entry]}
    atomic_write(_signatures_url(s.root), fmt.canonical_json(doc) + b"\n")
    return entry


def _who(e: dict) -> str:
    return f"{e['signer'] or 'unnamed signer'} (key {e['fingerprint'][:16]})"


def check_trust(url: str, trusted: list[str | Path]) -> dict:
    """The entry of a trusted key whose signature covers exactly this manifest; else one-line
    SignatureError saying what was found (no signatures, other keys, a manifest changed after signing)."""
    keys = {fingerprint(k): k for k in (load_public_key(p) for p in trusted)}
    s = open_signed(url)
    if not s.entries:
        raise SignatureError(f"{url} is not signed (no {SIGNATURES} beside its manifest); without a signature "
                             f"nothing says who made it")
    mine = [e for e in s.entries if e["fingerprint"] in keys]
    for e in mine:
        if entry_valid(s, e, keys[e["fingerprint"]]):
            return e
    if mine:
        e = mine[0]
        what = ("manifest.json changed after it was signed" if e["manifest_sha256"] != s.manifest_sha256
                else "the signature does not verify")
        raise SignatureError(f"{url}: the signature of trusted {_who(e)} does not cover this manifest ({what})")
    others = ", ".join(_who(e) for e in s.entries[:3])
    raise SignatureError(f"{url} is signed only by keys you do not trust: {others}; trusted: "
                         + ", ".join(k[:16] for k in keys))


def same_dataset(url: str, signed: dict | None, dataset_id: str) -> None:
    """After a verify: the dataset it checked is the signed one (its id covers every shard's and the latents'
    hashes), so a manifest swapped between the signature check and the verify's own read fails."""
    if signed is not None and signed["dataset_id"] != dataset_id:
        raise SignatureError(f"{url}: verify read dataset {dataset_id}, the signature is over {signed['dataset_id']} "
                             "(the manifest changed while it was checked); verify again")


def drop_signatures(root: str, dataset_id: str | None = None) -> list[str]:
    """Remove the signatures that no longer apply after the manifest was rewritten in place (`upgrade`): all of
    them, or with ``dataset_id`` only the entries over that (old) id (a killed upgrade run again), the file
    itself once none is left. Returns who signed the signatures removed; [] when none was."""
    url = _signatures_url(root)
    fs, path = fmt.get_fs(url)
    if not fs.exists(path):
        return []
    try:
        entries = read_signatures(root)
    except fmt.FormatError:
        if dataset_id is not None:
            return []  # unreadable: `info` names the problem; nothing says it was over the old id
        fs.rm(path)
        return [f"an unreadable {SIGNATURES}"]
    stale = [e for e in entries if dataset_id is None or e["dataset_id"] == dataset_id]
    kept = [e for e in entries if e not in stale]
    if kept and stale:
        atomic_write(url, fmt.canonical_json({"kind": SIGNATURES_KIND, "version": VERSION, "signatures": kept}) + b"\n")
    elif stale:
        fs.rm(path)
    return [_who(e) for e in stale]


def describe_signatures(url: str, res: fmt.Resolved | None = None) -> list[dict]:
    """What `factory info` says of each signature: signer, key fingerprint, and whether the signature
    matches this manifest under the key it carries (who signed; trust is `verify --trust`'s question);
    ``res``: ``url`` already opened."""
    s = open_signed(url, res)
    out = []
    for e in s.entries:
        key = _embedded_key(e)
        out.append({"signer": e["signer"], "fingerprint": e["fingerprint"],
                    "matches_manifest": key is not None and entry_valid(s, e, key)})
    return out

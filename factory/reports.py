"""What `factory verify` and `factory preview` report, built on the library side: the command parses its
options, calls one of these, and prints the lines it gets (`Report`).

* `verify_report`: the signature check (``--trust``), `factory verify`'s byte-level report, the optional
  regeneration (``--regenerate``), as text lines or one JSON object;
* `preview_report`: the PNG contact sheet and/or the self-contained HTML page, one line per file written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class Report:
    """A command's outcome: lines for stdout and stderr, and how it ends (``error``: the one line of a
    failed check, printed as ``Error: ...``; ``ok`` False without error: exit 1 after the lines)."""

    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    error: str | None = None
    ok: bool = True


def verify_report(dataset: str, *, trust: list[str] | tuple = (), as_json: bool = False, verbose: bool = False,
                  allow_remote_shards: bool = False, workers: int | None = None, scheduler: str | None = None,
                  index_only: bool = False, regenerate: int | str | None = None, options: dict | None = None) -> Report:
    """`factory verify DATASET`: every byte and cross-reference (`dataset.verify`), a trusted signature first
    when ``trust`` names keys, then ``regenerate`` samples made again (`generate.regenerate`, ``options``:
    seed, shards, generator, weights, latents, direction, device)."""
    from factory.dataset.signing import check_trust, same_dataset
    from factory.generate.regenerate import verify_dataset

    signed = check_trust(dataset, list(trust)) if trust else None
    rep, regen = verify_dataset(dataset, allow_remote_shards=allow_remote_shards, workers=workers, scheduler=scheduler,
                                index_only=index_only, samples=regenerate, options=options or {})
    same_dataset(dataset, signed, rep.dataset_id)
    if as_json:
        obj = {"ok": rep.ok, "dataset_id": rep.dataset_id, "view_id": rep.view_id,
               "samples": rep.samples, "shards": rep.shards, "bytes": rep.bytes,
               "bad_shards": rep.bad_shards, "problems": rep.problems}
        if signed is not None:
            obj["signed_by"] = {"signer": signed["signer"], "fingerprint": signed["fingerprint"]}
        if regen is not None:
            obj["ok"] = regen.ok
            obj["regenerate"] = regen.to_json()
        return Report(out=[json.dumps(obj, default=str)], ok=obj["ok"])
    if not rep.ok:
        return Report(err=list(rep.problems), error=rep.summary(), ok=False)
    r = Report()
    if signed is not None:
        r.out.append(f"signed by {signed['signer'] or 'an unnamed signer'} (trusted key {signed['fingerprint']})")
    if regen is None:
        r.out.append(rep.summary())
        return r
    if verbose:
        r.out.append(rep.summary())
        r.out += ["  " + "  ".join(f"{k} {v}" for k, v in d.items()) for d in regen.details]
    r.out += [regen.summary(), f"coverage: {regen.coverage}"]
    r.ok = regen.ok
    return r


def preview_report(dataset: str, *, out: str | None = None, html_out: str | None = None, n: int = 64,
                   allow_remote_shards: bool = False) -> Report:
    """`factory preview DATASET`: the contact sheet (``out``, PNG) and/or the browse page over the first ``n``
    samples (``html_out``), one line per file written."""
    from factory.browse.export import write_preview_html
    from factory.dataset.preview import write_preview

    r = Report()
    for target, write in ((out, write_preview), (html_out, write_preview_html)):
        if target:
            got = write(dataset, target, n=n, allow_remote_shards=allow_remote_shards)
            r.out.append(f"{target}: {got['samples_shown']} samples, {got['bytes']:,} bytes")
    return r

"""`factory info`: what a dataset or view is (counts, provenance, filter statistics, lineage), as a
JSON-able dict and as the human-readable text."""
from __future__ import annotations

from factory import format as fmt
from factory.dataset.card import stats_columns, summary_stats
from factory.dataset.reader import accepted_flags, load_index
from factory.dataset.signing import describe_signatures
from factory.provenance import platforms_line


def describe(url: str, allow_remote_shards: bool = False, stats: bool = True) -> dict:
    """What `factory info` prints: counts, provenance, filter statistics, lineage (one JSON-able dict)."""
    res = fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
    m = res.manifest
    spec = m.get("spec", {}) or {}
    gen = spec.get("generator", {}) or {}
    out: dict = {
        "url": url,
        "kind": "view" if res.view is not None else "dataset",
        "dataset_id": m["dataset_id"],
        "samples": res.samples,
        "candidates": m["samples"],
        "shards": len(m["shards"]),
        "bytes": int(fmt.columns_of(m["shards"], "bytes")[0].sum()),
        "root": res.root,
        "provenance": {
            "generator": gen.get("name"),
            "generator_identity": {k: v for k, v in gen.items() if k != "config"},
            "weights_sha256": gen.get("weights_sha256"),
            "direction": spec.get("direction"),
            "latent_source": spec.get("latents"),
            "seed": (spec.get("latents") or {}).get("seed"),
            "recipe": m.get("recipe"),
            "shift_r": spec.get("shift_r"),
            "mask_rule": spec.get("mask_rule"),
            "max_fg": spec.get("max_fg"),
            "image_codec": spec.get("image_codec"),
            "code_version": m.get("code_version"),
            "format_version": m.get("format_version"),
            "platforms": platforms_line(m),
        },
    }
    if m.get("provenance"):
        out["materialized_from"] = m["provenance"]
    if res.view is not None:
        v = res.view
        out.update({
            "view_id": v["view_id"],
            "parent": v["parent"],
            "predicate": v.get("predicate"),
            "lineage": v.get("lineage", []),
            "counts": v.get("counts", {}),
            "rejected": v.get("rejected", {}),
            "rejected_in_turn": v.get("rejected_in_turn"),
            "accept_rate": round(v["samples"] / m["samples"], 4) if m["samples"] else None,
        })
    try:
        out["signatures"] = describe_signatures(url, res)
    except fmt.FormatError as e:
        out["signatures"] = [{"problem": str(e)}]
    if stats:
        out.update(filter_stats(res))
    return out


def filter_stats(res: fmt.Resolved) -> dict:
    """filter_stats (every candidate) and, for a view, filter_stats_accepted: the ones the manifest and the view
    recorded when they were written (no index read), else computed from the index."""
    m, v = res.manifest, res.view
    cached = m.get("index_stats") if isinstance(m.get("index_stats"), dict) else None
    acc = v.get("accepted_stats") if v is not None and isinstance(v.get("accepted_stats"), dict) else None
    if cached is not None and (v is None or acc is not None):
        return {"filter_stats": cached, **({"filter_stats_accepted": acc} if v is not None else {})}
    table = load_index(res.root, m, columns=stats_columns(res.root, m))
    out = {"filter_stats": cached or summary_stats(table)}
    if v is not None and table is not None:

        flags = accepted_flags(res.accepted, table.column("row").to_numpy())
        out["filter_stats_accepted"] = summary_stats(table, flags)
    return out


def format_direction(direction) -> str:
    """A spec's direction as `info` prints it: "background  sha256 …" (a named one) or "h.npy (file)  sha256 …"."""
    if not isinstance(direction, dict):
        return "-" if direction is None else str(direction)
    rest = {k: v for k, v in direction.items() if k not in ("name", "file")}
    head = direction.get("name") or (f"{direction['file']} (file)" if direction.get("file") else None)
    return "  ".join(([head] if head else []) + [f"{k} {v}" for k, v in rest.items()]) or "-"


def format_rejections(v: dict) -> str:
    """The rejections of a view (or its `info`) as one phrase whose counts add up: each filter in turn,
    among the rows the earlier ones kept (the paper's Table 4), then the overlap ("also rejected by").

    "max_fg 389, then histogram 186 (575 in all; also rejected by histogram 50)". A view written before
    the in-turn counts existed shows its per-filter counts as they are (a row failing two counts for both).
    """
    alone = v.get("rejected") or {}
    in_turn = v.get("rejected_in_turn")
    if not alone:
        return "none"
    if in_turn is None:
        return ", ".join(f"{k} {n:,}" for k, n in alone.items())
    text = ", then ".join(f"{s['filter']} {s['rejected']:,}" for s in in_turn)
    if len(in_turn) < 2:
        return text
    also = ", ".join(f"{s['filter']} {s['also_rejected']:,}" for s in in_turn if s["also_rejected"])
    return text + f" ({sum(s['rejected'] for s in in_turn):,} in all" + (f"; also rejected by {also})" if also else ")")


def format_filter_line(v: dict) -> str:
    """`factory filter`'s line about a view (or the same counts of a filter not written yet): accepted of
    its input, the predicate, the rejections in turn."""
    c = v["counts"]
    return (f"{v['samples']:,} of {c['input']:,} accepted ({v['samples'] / max(1, c['input']):.1%}) "
            f"where {v['predicate']}; rejected by {format_rejections(v)}")


def format_pairs(d: dict | None) -> str:
    """``{"kind": "gaussian", "dim_z": 120}`` -> ``kind gaussian   dim_z 120`` (None values left out)."""
    if not d:
        return "-"
    first = [k for k in ("kind", "name", "image") if k in d]
    keys = first + [k for k in d if k not in first]
    return "   ".join(f"{k} {d[k]:,}" if isinstance(d[k], int) and not isinstance(d[k], bool) and d[k] >= 10_000
                      else f"{k} {d[k]}" for k in keys if d[k] is not None)


def format_signature(sig: dict) -> str:
    """One signature as `info` prints it: signer, key fingerprint, whether it covers this manifest."""
    if "problem" in sig:
        return sig["problem"]
    state = ("signature matches this manifest" if sig["matches_manifest"]
             else "signature does NOT match this manifest")
    return f"{sig['signer'] or 'unnamed signer'}  key {sig['fingerprint']}  ({state}; trust: verify --trust PUB.pem)"


def format_info(d: dict) -> str:
    """Human-readable `factory info`."""
    lines = []
    if d["kind"] == "view":
        lines.append(f"view {d['view_id']} of dataset {d['dataset_id']} ({d['root']})")
        lines.append(f"  samples      {d['samples']:,} of {d['candidates']:,} candidates"
                     + (f" ({d['accept_rate']:.1%})" if d.get("accept_rate") is not None else ""))
        lines.append(f"  predicate    {d.get('predicate')}")
        if d.get("rejected"):
            lines.append("  rejected by  " + format_rejections(d))
        for i, step in enumerate(d.get("lineage", [])):
            lines.append(f"  lineage[{i}]   {step.get('predicate')} -> {step.get('samples'):,} ({step.get('view_id')})")
    else:
        lines.append(f"dataset {d['dataset_id']} ({d['root']})")
        lines.append(f"  samples      {d['samples']:,}")
    lines.append(f"  shards       {d['shards']}   bytes {d['bytes']:,}")
    p = d["provenance"]
    lines.append(f"  generator    {p['generator']}  weights sha256 {p.get('weights_sha256') or '-'}")
    lines.append(f"  direction    {format_direction(p.get('direction'))}   shift r {p.get('shift_r')}   mask rule {p.get('mask_rule')}")
    lines.append(f"  latents      {format_pairs(p.get('latent_source'))}")
    codec = p.get("image_codec") or {}
    if codec:
        lines.append(f"  members      {format_pairs(codec)}")
    lines.append(f"  seed         {p.get('seed')}   recipe {p.get('recipe') or '-'}   code {p.get('code_version')}")
    if p.get("platforms"):
        lines.append(f"  platform     {p['platforms']}")
    for sig in d.get("signatures") or [{"problem": "nobody (factory sign signs a dataset; receivers check it with verify --trust)"}]:
        lines.append(f"  signed by    {format_signature(sig)}")
    if d.get("materialized_from"):
        mf = d["materialized_from"]
        lines.append(f"  materialized from {mf['parent']['dataset_id']} ({mf['parent']['url']}) where {mf['predicate']}")
        if mf.get("kind") == "relabelled":
            lines.append(f"  relabelled   by teacher {mf['teacher'].get('label')} (sha256 {mf['teacher']['sha256']}); "
                         f"index columns {', '.join(mf.get('agreement_columns', []))}")
    for name in ("filter_stats", "filter_stats_accepted"):
        st = d.get(name)
        if not st or not st.get("samples"):
            continue
        lines.append(f"  {'all candidates' if name == 'filter_stats' else 'accepted rows'}:")
        q = st.get("fg_ratio_quantiles", {})
        lines.append("    fg ratio quantiles  " + "  ".join(f"q{k}={v}" for k, v in q.items()))
        lines.append("    pass rates          " + "  ".join(f"{k} {v:.1%}" for k, v in st.get("pass_rate", {}).items()))
        cm = st.get("components_mean", {})
        lines.append(f"    components (mean)   raw {cm.get('raw')}  clean {cm.get('clean')}")
        if st.get("true_iou_mean"):
            lines.append("    true IoU (mean)     " + "  ".join(
                f"{k} {'-' if v is None else v}" for k, v in st["true_iou_mean"].items()))
    return "\n".join(lines)

"""`factory info`: what a dataset or view is (counts, provenance, filter statistics, lineage), as a
JSON-able dict and as the human-readable text."""
from __future__ import annotations

import json

from factory import format as fmt
from factory.dataset.card import summary_stats
from factory.dataset.reader import accepted_flags, index_schema, load_index


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
        "bytes": sum(s["bytes"] for s in m["shards"]),
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
            "accept_rate": round(v["samples"] / m["samples"], 4) if m["samples"] else None,
        })
    if stats:
        cols = ["row", "fg_ratio", "pass_area", "pass_hist_reference", "pass_hist_paper",
                "n_components_raw", "n_components"]
        schema = index_schema(res.root, m)
        cols += [c for c in ("true_iou",) if c in schema.names]
        table = load_index(res.root, m, columns=cols)
        out["filter_stats"] = summary_stats(table)
        if res.view is not None and table is not None:
            import pyarrow as pa

            flags = accepted_flags(res.accepted, table.column("row").to_numpy())
            out["filter_stats_accepted"] = summary_stats(table.filter(pa.array(flags)))
    return out


def format_info(d: dict) -> str:
    """Human-readable `factory info`."""
    lines = []
    if d["kind"] == "view":
        lines.append(f"view {d['view_id']} of dataset {d['dataset_id']} ({d['root']})")
        lines.append(f"  samples      {d['samples']:,} of {d['candidates']:,} candidates"
                     + (f" ({d['accept_rate']:.1%})" if d.get("accept_rate") is not None else ""))
        lines.append(f"  predicate    {d.get('predicate')}")
        if d.get("rejected"):
            lines.append("  rejected by  " + ", ".join(f"{k} {v:,}" for k, v in d["rejected"].items()))
        for i, step in enumerate(d.get("lineage", [])):
            lines.append(f"  lineage[{i}]   {step.get('predicate')} -> {step.get('samples'):,} ({step.get('view_id')})")
    else:
        lines.append(f"dataset {d['dataset_id']} ({d['root']})")
        lines.append(f"  samples      {d['samples']:,}")
    lines.append(f"  shards       {d['shards']}   bytes {d['bytes']:,}")
    p = d["provenance"]
    lines.append(f"  generator    {p['generator']}  weights sha256 {p.get('weights_sha256') or '-'}")
    lines.append(f"  direction    {json.dumps(p.get('direction'))}   shift r {p.get('shift_r')}   mask rule {p.get('mask_rule')}")
    lines.append(f"  latents      {json.dumps(p.get('latent_source'))}")
    codec = p.get("image_codec") or {}
    if codec:
        lines.append(f"  images       {json.dumps(codec)}")
    lines.append(f"  seed         {p.get('seed')}   recipe {p.get('recipe') or '-'}   code {p.get('code_version')}")
    if d.get("materialized_from"):
        mf = d["materialized_from"]
        lines.append(f"  materialized from {mf['parent']['dataset_id']} ({mf['parent']['url']}) where {mf['predicate']}")
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
            lines.append(f"    true IoU (mean)     {st['true_iou_mean']}")
    return "\n".join(lines)

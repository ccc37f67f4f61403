"""`factory filter`, `factory info`, `factory verify`, `factory sign`, `factory preview`, `factory relabel`,
`factory upgrade`: thin commands over factory.views, factory.dataset and factory.reports (each parses, calls one
library function, prints)."""
from __future__ import annotations

import json
import sys

import click

from factory.cli.options import LOCAL_WORKERS, SCHEDULER


def show(report) -> None:
    """Print a library `factory.reports.Report`: its lines, then its one-line error or exit status."""
    for line in report.err:
        click.echo(line, err=True)
    for line in report.out:
        click.echo(line)
    if report.error:
        raise click.ClickException(report.error)
    if not report.ok:
        sys.exit(1)


_REMOTE_HELP = "Trust shard paths in the manifest that are absolute remote URLs (off: only paths inside the dataset)."


@click.command("filter")
@click.argument("dataset")
@click.option("--max-fg", type=float, help="Keep fg_ratio < MAX_FG (strict, like the paper; 0.5 there).")
@click.option("--min-fg", type=float, help="Keep fg_ratio >= MIN_FG.")
@click.option("--histogram", type=click.Choice(["reference", "paper", "off"]), default="off", show_default=True,
              help="Histogram filter: reference = authors' code (hist_maxima >= 2), paper = paper text.")
@click.option("--min-components", type=int, help="Keep n_components >= N (after CC cleanup).")
@click.option("--max-components", type=int, help="Keep n_components <= N.")
@click.option("--where", help="Extra predicate over index columns, e.g. \"fg_ratio < 0.4 and n_components <= 2\".")
@click.option("--out", required=True, help="VIEW.json to write (a folder/URL with --materialize).")
@click.option("--materialize", is_flag=True, help="Write a compact new dataset with only the accepted samples.")
@click.option("--shard-size", type=int, help="With --materialize: samples per new shard (default: the parent's).")
@click.option("--overwrite", is_flag=True, help="Replace an existing view/dataset with other content at --out.")
@click.option("--allow-remote-shards", is_flag=True, help=_REMOTE_HELP)
@SCHEDULER
@LOCAL_WORKERS
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def filter_cmd(dataset, max_fg, min_fg, histogram, min_components, max_components, where, out, materialize,
               shard_size, overwrite, allow_remote_shards, scheduler, workers, as_json):
    """Select candidates by their index statistics; writes a view (no pixel is read).

    DATASET is a dataset folder/URL or a view JSON (its accepted rows are
    filtered further; the new view's parent stays the root dataset).

    \b
    Examples:
      factory filter data/demo --max-fg 0.5 --histogram reference --out data/paper.json
      factory filter data/paper.json --where "n_components <= 2 and not (fg_ratio < 0.05)" --out data/strict.json
      factory filter data/demo --max-fg 0.5 --histogram reference --materialize --out data/demo-paper
      factory filter s3://team/faces --max-fg 0.5 --out s3://team/views/faces.json --cluster tcp://node0:8786
    """
    from factory.api import run_filter
    from factory.dataset.info import format_filter_line
    from factory.views.views import FilterSpec

    spec = FilterSpec(max_fg=max_fg, min_fg=min_fg, histogram=histogram, min_components=min_components,
                      max_components=max_components, where=where)
    r = run_filter(dataset, spec, out, overwrite=overwrite, allow_remote_shards=allow_remote_shards,
                   materialize=materialize, shard_size=shard_size, scheduler=scheduler, workers=workers)
    v = r.view
    c = v["counts"]
    if as_json:
        d = {"view_id": v["view_id"], "dataset_id": v["parent"]["dataset_id"], "samples": v["samples"],
             "predicate": v["predicate"], "counts": c, "rejected": v["rejected"],
             "rejected_in_turn": v["rejected_in_turn"], "out": out}
        if r.materialized:
            d["materialized_dataset_id"] = r.materialized["dataset_id"]
        click.echo(json.dumps(d))
        return
    msg = format_filter_line(v)
    if r.materialized:
        m = r.materialized
        click.echo(f"{out}: dataset {m['dataset_id']}, {m['samples']:,} samples in {len(m['shards'])} shards; {msg}")
    else:
        click.echo(f"{out}: {v['view_id']}{'' if r.written else ' (unchanged)'}; {msg}")


@click.command()
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--no-stats", is_flag=True, help="Skip the index statistics (reads only the manifest/view).")
@click.option("--allow-remote-shards", is_flag=True, help=_REMOTE_HELP)
def info(dataset, as_json, no_stats, allow_remote_shards):
    """Describe a dataset or view: counts, provenance, filter statistics, lineage.

    \b
    Examples:
      factory info data/demo
      factory info data/paper.json --json
    """
    from factory.dataset.info import describe, format_info

    d = describe(dataset, allow_remote_shards=allow_remote_shards, stats=not no_stats)
    click.echo(json.dumps(d, sort_keys=True) if as_json else format_info(d))


class SampleCount(click.ParamType):
    """A positive number of samples, or ``all``."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value is None or value == "all" or isinstance(value, int):
            return value
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            self.fail(f"{value!r} is neither a positive number of samples nor 'all'", param, ctx)
        return n


@click.command()
@click.argument("dataset")
@click.option("--allow-remote-shards", is_flag=True, help=_REMOTE_HELP)
@LOCAL_WORKERS
@SCHEDULER
@click.option("--index-only", is_flag=True,
              help="Check only the manifest and index fragments (sha256, keys, rows, shard ids); read no tar or latent.")
@click.option("--regenerate", type=SampleCount(), metavar="N|all",
              help="Also make N samples (drawn across the shards; 'all': every one) again from the manifest's spec "
                   "alone and compare latent, image, mask, statistics and decisions (bytes where the project "
                   "promises them, else within thresholds).")
@click.option("--seed", type=int, help="With --regenerate: which samples are drawn (default: a fresh random seed, "
                                       "printed so the run can be repeated).")
@click.option("--shard", "shards", type=int, multiple=True, metavar="S",
              help="With --regenerate: draw from shard S only (repeatable).")
@click.option("--generator", help="With --regenerate: the code that rebuilds the spec's generator (a built-in, an "
                                  "installed plug-in or package.module:function, by your choice); default: the spec's "
                                  "name, if a built-in or installed plug-in has it.")
@click.option("--weights", help="With --regenerate: the generator weights file (path or URL), checked by sha256.")
@click.option("--latents", help="With --regenerate: the latents file or embeddings the spec names, checked by sha256.")
@click.option("--direction", help="With --regenerate: the direction file, for manifests that do not hold it.")
@click.option("--device", help="With --regenerate: device to regenerate on (default: a GPU if any, else cpu).")
@click.option("--verbose", is_flag=True, help="With --regenerate: one line per regenerated sample.")
@click.option("--trust", multiple=True, type=click.Path(dir_okay=False), metavar="PUB.pem",
              help="Fail unless this Ed25519 public key signed exactly this manifest (`factory sign`); repeatable: "
                   "any one of the keys.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def verify(dataset, allow_remote_shards, workers, scheduler, index_only, regenerate, seed, shards, generator, weights, latents,
           direction, device, verbose, trust, as_json):
    """Recompute every shard's sha256, bytes and samples; cross-check tars, index and latents.

    Exits 1 naming every bad shard (one line each) and what is wrong. With
    --regenerate N it then remakes N samples drawn across the shards from the
    spec and prints PASS or FAIL in one line with the seed, then what the draw
    can and cannot exclude (see docs/format.md, "Reproducibility"). The
    dataset never chooses code: its generator name must be a built-in or an
    installed plug-in, else pass --generator.

    \b
    Examples:
      factory verify data/demo
      factory verify data/million --index-only
      factory verify s3://team/faces --cluster tcp://node0:8786
      factory verify data/demo --regenerate 16
      factory verify data/demo --trust team-a.pub.pem
      factory verify data/demo --regenerate all --shard 3
      factory verify s3://team/faces --regenerate 8 --weights netG.pth --verbose
      AWS_ENDPOINT_URL=http://minio:9000 factory verify s3://team/bigbigan-imagenet-v1
    """
    from factory.reports import verify_report

    show(verify_report(dataset, trust=trust, as_json=as_json, verbose=verbose, allow_remote_shards=allow_remote_shards,
                       workers=workers, scheduler=scheduler, index_only=index_only, regenerate=regenerate,
                       options=dict(seed=seed, shards=shards, generator=generator, weights=weights, latents=latents,
                                    direction=direction, device=device)))


@click.command()
@click.argument("dataset")
@click.option("--key", required=True, type=click.Path(dir_okay=False), metavar="KEY.pem",
              help="Ed25519 private key (PEM), as `openssl genpkey -algorithm ed25519 -out KEY.pem` writes it.")
@click.option("--signer", help="Who signs, in one line (e.g. a team and its contact); signed with the manifest.")
def sign(dataset, key, signer):
    """Sign DATASET's manifest (every file's sha256 and the spec) with an Ed25519 key.

    Writes signatures.json beside manifest.json (signing again with the same key replaces its
    signature); the dataset id does not change. Receivers check it with
    `factory verify DATASET --trust PUB.pem`; `factory info` shows who signed.

    \b
    Examples:
      openssl genpkey -algorithm ed25519 -out team-a.pem
      openssl pkey -in team-a.pem -pubout -out team-a.pub.pem
      factory sign data/demo --key team-a.pem --signer "team A <a@example.org>"
      factory verify data/demo --trust team-a.pub.pem
    """
    from factory.dataset.signing import sign_dataset

    e = sign_dataset(dataset, key, signer)
    click.echo(f"{dataset}: dataset {e['dataset_id']} signed by {e['signer'] or 'an unnamed signer'} "
               f"(key {e['fingerprint']}; manifest sha256 {e['manifest_sha256']})")


@click.command()
@click.argument("dataset")
@click.option("--out", help="PNG file to write (path or URL).")
@click.option("--html", "html_out", help="Self-contained HTML page to write instead (or as well): the browse "
              "page over the first N samples, pictures inside, for a dataset card.")
@click.option("--n", "n", type=int, default=64, show_default=True, help="Samples shown.")
@click.option("--allow-remote-shards", is_flag=True, help=_REMOTE_HELP)
def preview(dataset, out, html_out, n, allow_remote_shards):
    """Contact sheet of images with masks overlaid, fg-ratio histogram and filter pass rates.

    For a view, the sheet shows accepted samples and the histogram splits accepted/rejected.
    --html writes the page of `factory browse` over the first N samples as one file.

    \b
    Examples:
      factory preview data/demo --out demo.png
      factory preview data/paper.json --out paper.png --n 36
      factory preview data/demo --html demo.html
    """
    from factory.reports import preview_report

    if not out and not html_out:
        raise click.UsageError("give --out PREVIEW.png or --html PREVIEW.html (or both)")
    show(preview_report(dataset, out=out, html_out=html_out, n=n, allow_remote_shards=allow_remote_shards))


@click.command("relabel")
@click.argument("dataset")
@click.option("--maps", required=True, help="Teacher maps of DATASET written by `trainers relabel --out MAPS`.")
@click.option("--out", required=True, help="Folder/URL of the new dataset (resumable; images copied byte for byte).")
@click.option("--shard-size", type=int, help="Samples per new shard (default: the parent's).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset with other content at --out.")
@click.option("--allow-remote-shards", is_flag=True, help=_REMOTE_HELP)
def relabel(dataset, maps, out, shard_size, overwrite, allow_remote_shards):
    """Write DATASET (a dataset or view) with a teacher's masks and agreement columns as a new dataset.

    Each sample gains KEY.teacher.png; the index gains teacher_iou, teacher_conf_fg, teacher_conf_bg,
    teacher_fg_ratio and teacher_components (filter on them with --where).

    \b
    Examples:
      trainers relabel --model runs/round1 --data data/paper.json --out data/maps
      factory relabel data/paper.json --maps data/maps --out data/teacher
      factory filter data/teacher --where "teacher_iou >= 0.5" --out data/agree.json
    """
    from factory.views.relabel import relabel_dataset

    m = relabel_dataset(dataset, maps, out, shard_size=shard_size, overwrite=overwrite,
                        allow_remote_shards=allow_remote_shards)
    t = m["provenance"]["teacher"]
    click.echo(f"{out}: dataset {m['dataset_id']}, {m['samples']:,} samples in {len(m['shards'])} shards, "
               f"teacher {t['label']} ({t['sha256'][:16]}...)")


@click.command()
@click.argument("dataset")
@click.option("--compact", "compact_index", is_flag=True,
              help="Compact the index into parts even when the dataset has few shards (64 or more always are).")
@SCHEDULER
@LOCAL_WORKERS
def upgrade(dataset, compact_index, scheduler, workers):
    """Bring a dataset written by an older format version to the current one, in place.

    Version 1 -> 2 adds each sample's byte range in its tar to the index (random access by key;
    trainers train --access random), rewriting index fragments and the manifest only, never a tar.
    Version 2 -> 4 (64 shards or more, or --compact) compacts the index fragments into a few large
    Parquet parts, reading only the index, and writes the shard entries as shards.parquet beside the
    manifest; version 3 -> 4 writes only that table. The dataset id changes; views made before still open.
    Signatures over the old manifest no longer apply and are removed: sign again. Do not read the
    dataset meanwhile.

    \b
    Examples:
      factory upgrade data/million && factory verify data/million
      factory upgrade s3://team/faces --cluster tcp://node0:8786
    """
    from factory.dataset.upgrade import upgrade as run_upgrade

    click.echo(run_upgrade(dataset, compact_index=compact_index, scheduler=scheduler, workers=workers).summary())

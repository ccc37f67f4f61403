"""`factory export`: a dataset's or view's samples for other readers, without a copy (thin; factory.api)."""
from __future__ import annotations

import json

import click

from factory.cli.errors import FactoryGroup


@click.group(cls=FactoryGroup)
def export():
    """A dataset's or view's samples described for other readers (no sample copied).

    \b
    Example:
      factory export wids data/shapes-paper.json --out data/paper.wids.json --indices data/paper.npy
    """


@export.command("wids")
@click.argument("view")
@click.option("--out", required=True, help="FILE.json: the wids shard list of the shards holding VIEW's samples.")
@click.option("--indices", required=True, help="FILE.npy: VIEW's samples as indices in the shard list's numbering.")
@click.option("--allow-remote-shards", is_flag=True,
              help="Trust shard paths in the manifest that are absolute remote URLs (off: only paths inside the dataset).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def wids(view, out, indices, allow_remote_shards, as_json):
    """Write VIEW (a view JSON or a dataset) as a wids shard list and the indices of its samples.

    torch.utils.data.Subset(wids.ShardListDataset(FILE.json), np.load(FILE.npy)) is then VIEW's samples, read
    from the dataset's own shards (local paths or s3:// URLs).

    \b
    Example:
      factory export wids data/paper.json --out data/paper.wids.json --indices data/paper.wids.npy
    """
    from factory.api import open as open_api

    r = open_api(view, allow_remote_shards=allow_remote_shards).export_wids(out, indices)
    if as_json:
        click.echo(json.dumps(r))
    else:
        click.echo(f"{out}: {r['shards']} shards ({r['indexed']:,} samples); {indices}: the view's "
                   f"{r['samples']:,} samples")

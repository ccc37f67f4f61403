"""`factory browse`: the local web page over a dataset or view (thin; factory.browse does the work)."""
from __future__ import annotations

import click


@click.command()
@click.argument("dataset")
@click.option("--port", type=int, default=8765, show_default=True, help="Port on 127.0.0.1 (0: any free port).")
@click.option("--views-dir", help="Folder where the page's 'Save view' writes VIEW.json (default: the folder "
              "holding DATASET).")
@click.option("--allow-remote-shards", is_flag=True,
              help="Trust shard paths in the manifest that are absolute remote URLs (off: only paths inside the dataset).")
@click.option("--verbose", is_flag=True, help="Log every request to stderr.")
def browse(dataset, port, views_dir, allow_remote_shards, verbose):
    """Serve a page over DATASET (a dataset folder/URL or a view JSON) on 127.0.0.1 until Ctrl-C.

    The page pages through every sample from the index, sorts by any index column, filters with the
    --where language of `factory filter` (the same counts), draws histograms of the index columns, shows
    a sample's image, masks, latent norm and JSON, and saves the filter as a view file.

    \b
    Examples:
      factory browse data/demo
      factory browse data/paper.json --port 8800
      AWS_ENDPOINT_URL=http://minio:9000 factory browse s3://team/bigbigan-imagenet-v1 --views-dir views/
    """
    from factory.browse.server import browse as serve

    def ready(server):
        click.echo(f"factory browse: {server.address}  (Ctrl-C stops it)", err=False)

    serve(dataset, port, views_dir=views_dir, allow_remote_shards=allow_remote_shards, on_ready=ready,
          verbose=verbose)
    click.echo("factory browse: stopped")

"""`factory weights ...`: download and inspect generator weights (thin wrappers over factory.weights and the bigbigan checkpoint inspector)."""
from __future__ import annotations

import json

import click

from factory.cli.errors import FactoryGroup


@click.group("weights", cls=FactoryGroup)
def weights():
    """Download and inspect generator weights.

    \b
    Example:
      factory weights fetch bigbigan
      factory weights inspect ~/.cache/factory/weights/BigBiGAN_x1.pth
    """


@weights.command("fetch")
@click.argument("name")
@click.option("--url", help="Download from this URL instead of the catalog's (manifests/weights.toml).")
@click.option("--sha256", "sha256", help="Expected sha256 (hex); the file is renamed into place only if it matches.")
@click.option("--to", "to", type=click.Path(), help="Destination file or folder [default: $FACTORY_HOME/weights].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fetch_cmd(name, url, sha256, to, quiet):
    """Download weights NAME (resumable, verified before it is renamed into place).

    \b
    Example:
      factory weights fetch bigbigan
      factory weights fetch bigbigan --url https://example.org/BigBiGAN_x1.pth --sha256 <hex> --to weights/
    """
    from factory.weights import fetch

    r = fetch(name, url=url, sha256=sha256, to=to, progress=not quiet)
    state = "already present" if r.already_present else (
        f"downloaded (resumed at {r.resumed_from} bytes)" if r.resumed_from else "downloaded")
    click.echo(f"{r.path}: {state}, {r.bytes} bytes")
    click.echo(f"sha256 {r.sha256} ({'verified' if r.pinned else 'not pinned: pass --sha256 or pin it in manifests/weights.toml'})")


@weights.command("inspect")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def inspect_cmd(path, as_json):
    """Tell which generator config a weights file matches, its parameter count and sha256.

    \b
    Example:
      factory weights inspect ~/.cache/factory/weights/BigBiGAN_x1.pth
    """
    from factory.generators.bigbigan.checkpoint import inspect_weights

    info = inspect_weights(path)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"file:       {info['path']} ({info['format']}, {info['bytes']} bytes)")
    click.echo(f"sha256:     {info['sha256']}")
    click.echo(f"keys:       {info['keys']} ({', '.join(info['dtypes'])})")
    click.echo(f"parameters: {info['parameters']:,} (+ {info['buffer_elements']:,} buffer elements)")
    if info["matches"]:
        click.echo(f"matches:    {info['matches']}")
    else:
        raise click.ClickException(f"matches no BigBiGAN config: {info['problem']}")

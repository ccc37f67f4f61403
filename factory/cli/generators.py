"""`factory generators list`: every generator `--generator` accepts (built-ins, installed plug-ins, and
any package.module:function given), with dim_z, resolution and where it comes from."""
from __future__ import annotations

import dataclasses
import json

import click

from factory.cli.errors import FactoryGroup


@click.group(cls=FactoryGroup)
def generators():
    """Generators that `--generator` accepts (built-in, plug-in entry points, package.module:function).

    \b
    Example:
      factory generators list
    """


@generators.command("list")
@click.argument("extra", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON list of {name, dim_z, resolution, origin, source, summary, note}.")
@click.option("--no-probe", is_flag=True, help="Do not build plug-ins that do not declare dim_z/resolution.")
def list_cmd(extra, as_json, no_probe):
    """List the available generators; EXTRA names (e.g. mypkg.gans:make) are loaded and listed too.

    \b
    Examples:
      factory generators list
      factory generators list mypkg.gans:make --json
    """
    from factory.generators import describe_generators

    rows = describe_generators(extra, probe=not no_probe)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    def cell(v):
        return "-" if v is None else str(v)

    table = [("name", "dim_z", "res", "origin", "source")] + [
        (r.name, cell(r.dim_z), cell(r.resolution), r.origin, r.source) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for i, row in enumerate(table):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i and (rows[i - 1].summary or rows[i - 1].note):
            r = rows[i - 1]
            click.echo("    " + "; ".join(t for t in (r.summary, r.note) if t))

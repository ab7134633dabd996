"""nqtool: the command line. Subcommands are imported lazily so that the reader-side commands
(inspect, verify, extract) never import torch."""

from __future__ import annotations

import importlib

import click

__all__ = ["main"]

# name -> "module:attribute"; each module defines one click command.
_COMMANDS: dict[str, str] = {
    "convert": "nqformat.cli.convert:convert",
    "inspect": "nqformat.cli.inspect:inspect_cmd",
    "verify": "nqformat.cli.verify:verify",
    "extract": "nqformat.cli.extract:extract",
    "eval": "nqformat.cli.evaluate:eval_cmd",
    "bench": "nqformat.cli.bench:bench",
    "fetch": "nqformat.cli.fetch:fetch",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nqformat")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """Convert, inspect, verify and run NestQuant .nq model files."""

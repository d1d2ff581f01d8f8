"""The parser shared by the `python -m datamodules.<module> generate` commands.

Argparse only: the generators and their command lines (datamodules.listops_generator,
datamodules.pathfinder_generator) import neither torch nor Lightning, so `--help` answers at once.
"""

from __future__ import annotations

import argparse


def generate_command(
    module: str, summary: str, help_text: str, description: str
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(parser, generate sub-parser) of `python -m datamodules.<module> generate ...`."""
    parser = argparse.ArgumentParser(prog=f"python -m datamodules.{module}", description=summary)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser(
        "generate", help=help_text, description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    return parser, generate

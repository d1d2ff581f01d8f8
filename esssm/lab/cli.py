"""Command line: `lightning`/`esssm` fit|validate|test (LightningCLI, esssm.train.cli), plus
the project's tools (`esssm sweep|export|plan|cascade ...`, listed by `esssm --help`).

    lightning fit --config conf/listops/esssm.yaml
    esssm sweep --ckpt runs/.../checkpoints/last.ckpt --data-config conf/listops/esssm.yaml

Arguments are read before anything heavy is imported: `--help` of every tool answers without
torch, and Lightning is imported only for its subcommands. An expected mistake (a missing or
damaged file, an existing output, a wrong kind of checkpoint, a bad value; `EXPECTED_ERRORS`)
ends in one line on stderr and exit status 1; `--debug` or ESSSM_DEBUG=1 shows its traceback.

OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE unless set): torch's spinning threads
slowed a training step on 2 busy cores up to 16x (docs/benchmarks.md, "Threads under load").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from esssm.lab.quiet import quiet_banners
from esssm.train import SUBCOMMANDS

HELP_FLAGS = ("-h", "--help")
DEBUG_FLAG, DEBUG_ENV = "--debug", "ESSSM_DEBUG"
# Mistakes a user makes and fixes: files missing, damaged, foreign or in the way (OSError, the
# datamodules' DataFolderError, RunFolderError), bad values and wrong kinds of checkpoint
# (ValueError: CheckpointError, ChecksumError, MalformedDataError, ...), a diverging run
# (FloatingPointError), and Lightning's MisconfigurationException (see `is_expected`). Anything
# else is a bug and keeps its traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, FloatingPointError)
# Set before torch is imported (the OpenMP runtime reads it once); see the module docstring.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
DEBUG_HINT = f"{DEBUG_FLAG} (or {DEBUG_ENV}=1) shows the traceback of an error instead of one line"


def is_expected(error: BaseException) -> bool:
    """Whether `error` is a user's mistake (EXPECTED_ERRORS, or Lightning's configuration error
    when Lightning is loaded) rather than a bug."""
    if isinstance(error, EXPECTED_ERRORS):
        return True
    exceptions = sys.modules.get("lightning.fabric.utilities.exceptions")
    return exceptions is not None and isinstance(error, exceptions.MisconfigurationException)


def debugging(args: list[str]) -> bool:
    """`--debug` among the arguments, or ESSSM_DEBUG set to anything but 0."""
    return DEBUG_FLAG in args or os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def run_command(prog: str, command: Callable[[list[str]], int], args: list[str], debug: bool) -> int:
    """`command(args)`; an expected error is printed as "`prog`: error: message" and gives exit
    status 1, unless `debug`, where it propagates with its traceback."""
    if debug:
        return command(args)
    try:
        return command(args)
    except Exception as error:
        if not is_expected(error):
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1


def _tools() -> dict[str, Callable[[list[str]], int]]:
    from esssm.lab import commands

    return commands.TOOLS


def _first_doc_line(function: Callable) -> str:
    return ((function.__doc__ or "").strip().splitlines() or [""])[0]


def overview(prog: str, tools: dict[str, Callable[[list[str]], int]] | None) -> str:
    """`prog --help`: the Lightning subcommands and, for `esssm`, the project's tools (the first
    line of each tool function's docstring), without importing Lightning."""
    entries = dict(SUBCOMMANDS) | {name: _first_doc_line(tool) for name, tool in (tools or {}).items()}
    width = max(map(len, entries))
    line = {name: f"  {name:<{width}}  {text}" for name, text in entries.items()}
    text = [f"usage: {prog} [{DEBUG_FLAG}] {{{','.join(entries)}}} ...", "", "ES-SSM Lab.", "",
            f"Lightning subcommands (`{prog} SUBCOMMAND --help` for the trainer, model and data options):",
            *(line[name] for name in SUBCOMMANDS)]
    if tools:
        text += ["", f"Project tools (`{prog} TOOL --help` for each):", *(line[name] for name in tools)]
    else:
        text += ["", "The project's tools run as `esssm TOOL` (`esssm --help` lists them)."]
    return "\n".join([*text, "", DEBUG_HINT, ""])


def _lightning(description: str, from_command_line: bool) -> Callable[[list[str]], int]:
    def run(args: list[str]) -> int:
        from esssm.train.cli import run_cli

        if from_command_line:  # LightningCLI reads sys.argv itself (and warns when also given args)
            sys.argv[1:] = args
        run_cli(None if from_command_line else args, description)
        return 0

    return run


def _main(prog: str, argv: list[str] | None, tools: dict[str, Callable[[list[str]], int]] | None) -> int:
    for name, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    quiet_banners()
    args = sys.argv[1:] if argv is None else list(argv)
    debug = debugging(args)
    args = [arg for arg in args if arg != DEBUG_FLAG]
    if tools and args and args[0] in tools:
        return run_command(f"{prog} {args[0]}", tools[args[0]], args[1:], debug)
    if not args or args[0] in HELP_FLAGS:
        print(overview(prog, tools), file=sys.stdout if args else sys.stderr, end="")
        return 0 if args else 2
    name = f"{prog} {args[0]}" if args[0] in SUBCOMMANDS else prog
    return run_command(name, _lightning(overview(prog, tools), argv is None), args, debug)


def main(argv: list[str] | None = None) -> int:
    """`esssm`: the project's own tools (sweep, ...) or the Lightning subcommands."""
    return _main("esssm", argv, _tools())


def lightning_main(argv: list[str] | None = None) -> int:
    """`lightning`: fit | validate | test with --config conf/<task>/<model>.yaml."""
    return _main("lightning", argv, None)

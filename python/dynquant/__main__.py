"""Command line: ``python -m dynquant demo``, ``python -m dynquant bench`` and
``python -m dynquant observer-bench`` (``--help`` after a command lists its
options)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from ._core import __version__

PROG = "python -m dynquant"

# Subcommand -> ("module:function", one-line description). The function takes
# the remaining arguments and the program name to show in its usage, parses
# them with its own argparse parser and returns the exit code. Modules are
# imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "dynquant.demo:run_demo",
        "quantize a real sentence-embedding model (all-MiniLM-L6-v2) and compare it "
        "with float32; --synthetic needs no model",
    ),
    "bench": (
        "dynquant.bench:main",
        "benchmark the kernels beside NumPy, PyTorch and ONNX Runtime "
        "(also: python -m dynquant.bench)",
    ),
    "observer-bench": (
        "dynquant.observer_bench:main",
        "time and peak memory of streaming calibration (in memory, observer, Dask)",
    ),
}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The top-level parser: it lists the commands; each command's own parser
    (``python -m dynquant COMMAND --help``) documents its options."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="dynquant: dynamic activation quantization (W8A8 / W4A8) for CPU inference.",
        epilog=f"Run '{prog} COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"dynquant {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, description) in COMMANDS.items():
        commands.add_parser(name, help=description, add_help=False)
    return parser


def _load(target: str) -> Callable[..., int]:
    module, _, function = target.partition(":")
    run: Callable[..., int] = getattr(importlib.import_module(module), function)
    return run


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _prog() -> str:
    """``python -m dynquant``, or the ``dynquant`` script's name."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return PROG if script in {"", "__main__.py", "-c"} else script


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m dynquant``; returns the exit code (argparse's 2 for bad
    arguments, 0 after ``--help``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    prog = _prog() if argv is None else PROG
    try:
        if args and args[0] in COMMANDS:
            # The command's parser handles everything after the command name,
            # ``--help`` included.
            return _load(COMMANDS[args[0]][0])(args[1:], prog=f"{prog} {args[0]}")
        # No command, an unknown one, -h/--help or --version: argparse prints
        # the help or its usual error.
        build_parser(prog).parse_args(args)
    except SystemExit as exc:
        return _exit_code(exc)
    return 2  # unreachable: parse_args exits without a known command


if __name__ == "__main__":
    raise SystemExit(main())

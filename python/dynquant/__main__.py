"""Command line: ``python -m dynquant demo``, ``python -m dynquant bench`` and
``python -m dynquant observer-bench``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

# Subcommand -> "module:function"; the function takes the remaining arguments
# and returns the exit code. Modules are imported only when their command runs.
COMMANDS: dict[str, str] = {
    "demo": "dynquant.demo:run_demo",
    "bench": "dynquant.bench:main",
    "observer-bench": "dynquant.observer_bench:main",
}


def _load(target: str) -> Callable[[list[str]], int]:
    module, _, function = target.partition(":")
    run: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
    return run


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    usage = f"usage: python -m dynquant {{{','.join(COMMANDS)}}} [options]"
    if not args or args[0] in {"-h", "--help"}:
        print(usage)
        return 0
    if args[0] not in COMMANDS:
        print(f"unknown command {args[0]!r}\n{usage}", file=sys.stderr)
        return 2
    return _load(COMMANDS[args[0]])(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())

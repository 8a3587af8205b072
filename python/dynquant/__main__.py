"""Command line: ``python -m dynquant demo`` and ``python -m dynquant bench``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print("usage: python -m dynquant {demo,bench} [options]")
        return 0
    if args[0] == "bench":
        from .bench import main as bench_main

        return bench_main(args[1:])
    print(f"unknown command {args[0]!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

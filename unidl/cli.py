"""The ``unidl`` command (also ``python -m unidl``)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unidl", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    compare = commands.add_parser("compare", help="train the two-layer net on every installed backend, losses side by side")
    compare.add_argument("--steps", type=int, default=200)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "compare"
    if command == "compare":
        from unidl.compare import print_side_by_side

        print_side_by_side(getattr(args, "steps", 200))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `keyprop` command: `parse_args()` + `main()`; subcommands are added by each feature."""
from __future__ import annotations

import argparse
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="keyprop", description="Propagate clean keyframes through a shot.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="list the model presets and their sizes")
    info.add_argument("--preset", default=None, help="show one preset in detail")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.version:
        from . import __version__
        print(__version__)
        return 0
    if args.command == "info":
        from .core.model import presets
        for name in presets.list_presets():
            if args.preset and name != args.preset:
                continue
            cfg = presets.get_config(name)
            print(f"{name:8s} {presets.count_parameters(cfg) / 1e6:7.2f} M parameters  {presets.describe(name)}")
        return 0
    print("keyprop: no command given (try `keyprop --help`)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

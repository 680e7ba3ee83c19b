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
    parity = sub.add_parser("parity", help="check the paper preset against the published generator's outputs")
    parity.add_argument("--fixtures", default=None,
                        help="folder of NAME.json + NAME.npz cases (default: the bundled ones)")
    from .core.training import cli as training_cli
    training_cli.add_parser(sub)
    from .core import run_cli
    run_cli.add_parsers(sub)
    from .plugin.farm import cli as farm_cli
    farm_cli.add_parser(sub)
    from .export import cli as export_cli
    export_cli.add_parser(sub)
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
    if args.command == "parity":
        return _parity(args)
    if args.command in ("train", "finetune"):
        from .core.training import cli as training_cli
        return training_cli.run(args)
    if args.command in ("run", "demo"):
        from .core import run_cli
        return run_cli.main_guarded(args)
    if args.command == "export":
        from .export import cli as export_cli
        return export_cli.run(args)
    if args.command == "farm":
        from .plugin.farm import cli as farm_cli
        return farm_cli.run(args)
    print("keyprop: no command given (try `keyprop --help`)", file=sys.stderr)
    return 2


def _parity(args) -> int:
    from pathlib import Path

    from .core.model import parity

    directory = Path(args.fixtures) if args.fixtures else parity.default_fixture_dir()
    try:
        results = parity.check_dir(directory)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"keyprop parity: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{r.case}: output max abs error {r.output_error:.2e} (tolerance {parity.OUTPUT_TOLERANCE:.0e}), "
              f"logits {r.logits_error:.2e} (tolerance {parity.LOGITS_TOLERANCE:.0e}) -> {'OK' if r.ok else 'FAIL'}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

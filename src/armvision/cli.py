"""The ``armvision`` command: one entry point, one subcommand per task.

Each subcommand lives in the package that does its work and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed args, returns an exit code).
Add a subcommand by listing its module in ``_COMMAND_MODULES``. A subcommand that takes free-form
config overrides (``--optim.lr 1e-3``) sets ``config_overrides=True`` in its defaults and receives
the flags argparse does not know in ``args.overrides``; elsewhere they are an error.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# modules providing ``register(subparsers)``; imported lazily so that ``armvision --help`` is fast
_COMMAND_MODULES: list[str] = [
    "armvision.train.cli",  # pretrain, finetune, eval, demo
    "armvision.interop.cli",  # convert
    "armvision.features_cli",  # extract
    "armvision.analysis.cli",  # linprobe, knn, visualize, predict
    "armvision.train.export_cli",  # export
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="armvision",
        description="Autoregressive pretraining (ARM) of Mamba vision models.",
    )
    parser.add_argument("--version", action="version", version=f"armvision {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # accepted before or after the subcommand
        argv = [a for a in argv if a != "--debug"]
        previous = os.environ.get("ARMVISION_DEBUG")
        os.environ["ARMVISION_DEBUG"] = "1"
        try:
            return main(argv)
        finally:
            if previous is None:
                os.environ.pop("ARMVISION_DEBUG", None)
            else:
                os.environ["ARMVISION_DEBUG"] = previous
    from .train.cli import set_argv

    set_argv(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "config_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

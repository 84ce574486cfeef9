"""The ``armvision`` command: one dispatcher, one guard, one module per command group.

    armvision/cli/__init__.py   main(): builds the parser, runs the chosen command under the guard
    armvision/cli/_guard.py     one-line user errors (exit 2), --debug tracebacks, preemption (75), Ctrl-C (130)
    armvision/cli/_parser.py    the parser class: dashed flags that also take their underscore spelling
    armvision/cli/train.py      pretrain, finetune, eval, demo
    armvision/cli/interop.py    convert, export
    armvision/cli/features.py   extract
    armvision/cli/analysis.py   linprobe, knn, visualize, predict

A command module provides ``register(subparsers)``, which adds its parsers and sets ``func`` (called with the
parsed args; returns an exit code or None for 0, raises :class:`~armvision.errors.UserError` for bad input).
The work itself is a library function the command calls. A command that takes free-form config overrides
(``--optim.lr 1e-3``) sets ``config_overrides=True`` in its defaults and receives the flags argparse does not
know in ``args.overrides``; elsewhere they are an error.
"""

from __future__ import annotations

import importlib
import sys

from .. import __version__
from ._guard import guarded
from ._parser import ArmvisionParser, add_debug

__all__ = ["main", "build_parser"]

# modules providing ``register(subparsers)``; imported when the parser is built, in the order of ``--help``
_COMMAND_MODULES: list[str] = [
    "armvision.cli.train",  # pretrain, finetune, eval, demo
    "armvision.cli.interop",  # convert, export
    "armvision.cli.features",  # extract
    "armvision.cli.analysis",  # linprobe, knn, visualize, predict
]


def build_parser() -> ArmvisionParser:
    parser = ArmvisionParser(prog="armvision",
                             description="Autoregressive pretraining (ARM) of Mamba vision models.")
    parser.add_argument("--version", action="version", version=f"armvision {__version__}")
    add_debug(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    parser.command_parsers = dict(sub.choices)
    for p in sub.choices.values():
        add_debug(p)  # on every command, after its subcommand too
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``armvision ARGV...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    _refuse_flagged_positionals(parser.command_parsers.get(args.command), extra)
    if extra and not getattr(args, "config_overrides", False):
        parser.command_parsers.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return guarded(args.command, lambda: _run(args), debug=bool(args.debug))


def _refuse_flagged_positionals(command_parser: ArmvisionParser | None, extra: list[str]) -> None:
    """``armvision eval --checkpoint X``: the checkpoint is a positional argument of the command, so argparse took X
    as the checkpoint and left ``--checkpoint`` over (an unknown flag, or an empty config override). Say that
    instead (exit 2, after the usage)."""
    if command_parser is not None:
        message = command_parser.flagged_positional(extra)
        if message:
            command_parser.error(message)


def _run(args):
    from ..ops.launch import check_environment

    check_environment()  # a bad ARMVISION_SCAN_CONFIG / ARMVISION_CONV_CONFIG: one line, before any work
    return args.func(args)

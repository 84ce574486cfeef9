"""The parser class of every ``armvision`` command: dashed flags that also answer to their underscore spelling,
and a help epilog that may depend on the command line (``pretrain --config X --help`` shows X's values)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

__all__ = ["ArmvisionParser", "underscore_alias", "add_debug"]


def underscore_alias(option: str) -> str | None:
    """``--batch-size`` -> ``--batch_size`` (the spelling also accepted); None for a flag without a dash inside."""
    if not option.startswith("--") or "-" not in option[2:]:
        return None
    return "--" + option[2:].replace("-", "_")


class ArmvisionParser(argparse.ArgumentParser):
    """An ArgumentParser (subcommands are made of the same class) whose ``--long-flags`` also accept
    ``--long_flags`` -- help, usage and error messages show the dashed spelling only -- and no abbreviation, and
    whose ``dynamic_epilog(argv)``, when set, writes the epilog from the arguments being parsed."""

    def __init__(self, *args, dynamic_epilog: Callable[[Sequence[str]], str] | None = None, **kwargs):
        # flags are spelt out: an abbreviation would take a config key (--d for --data.root) as another flag
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.dynamic_epilog = dynamic_epilog
        self._arguments: list[str] = []

    def add_argument(self, *names, **kwargs):
        action = super().add_argument(*names, **kwargs)
        for alias in filter(None, map(underscore_alias, action.option_strings)):
            if alias in self._option_string_actions:
                raise ValueError(f"{alias} is both a flag and the underscore spelling of {names[0]}")
            # known to the parser, not listed among the action's names (which help and errors show)
            self._option_string_actions[alias] = action
        return action

    def parse_known_args(self, args=None, namespace=None):
        self._arguments = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def flagged_positional(self, tokens: Sequence[str]) -> str | None:
        """The message for a positional argument given as a flag (``eval --checkpoint X``), if ``tokens`` hold one."""
        positional = {a.dest for a in self._actions if not a.option_strings}
        for tok in tokens:
            flag = str(tok).partition("=")[0]
            if flag.startswith("--") and flag[2:].replace("-", "_") in positional:
                return (f"{flag}: the {flag[2:]} is a positional argument here, given without a flag "
                        "(see the usage above)")
        return None

    def error(self, message: str):
        # argparse's own complaint (a missing positional, an unknown flag) is the consequence; say the cause
        super().error(self.flagged_positional(self._arguments) or message)

    def format_help(self) -> str:
        if self.dynamic_epilog is not None:
            self.epilog = self.dynamic_epilog(self._arguments)
        return super().format_help()


def add_debug(p: argparse.ArgumentParser, default=argparse.SUPPRESS) -> None:
    """``--debug``: a user error keeps its Python traceback (on every command, and before the command)."""
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the Python traceback of an error instead of its one-line message")

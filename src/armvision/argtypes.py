"""Argument types of the commands' parsers: a number out of range is refused by argparse itself, in one line
(``armvision predict: error: argument --topk: must be at least 1, got 0``), before any work starts.

    p.add_argument("--batch-size", type=positive_int, default=64)
"""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "nonneg_int", "positive_float", "nonneg_float", "fraction"]


def _number(kind, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer of at least 1 (counts: batch sizes, k, epochs, image sizes, classes)."""
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def nonneg_int(text: str) -> int:
    """An integer of at least 0 (worker processes, seeds)."""
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number greater than 0 (learning rates, temperatures)."""
    value = _number(float, text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def nonneg_float(text: str) -> float:
    """A finite number of at least 0 (weight decay)."""
    value = _number(float, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1) (a held-out share)."""
    value = _number(float, text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value

"""Command-line values and table formatting: sizes, counts, rates, numbers."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence

__all__ = [
    "byte_count",
    "count_list",
    "fmt",
    "fmt_ratio",
    "format_size",
    "name_list",
    "parse_size",
    "rate_list",
    "size_list",
]

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2}


def byte_count(text: str) -> int:
    """A number of bytes: ``0``, ``200``, ``16k``, ``16KiB``, ``1m``, ``1MiB`` (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 200, 16k, 1MiB)")
    return int(match.group(1)) * _SIZE_UNITS[unit]


def parse_size(text: str) -> int:
    """A message size, at least one byte: ``200``, ``16k``, ``1MiB``."""
    size = byte_count(text)
    if size < 1:
        raise argparse.ArgumentTypeError(f"size must be at least 1 byte: {text!r}")
    return size


def size_list(text: str) -> list[int]:
    """``8,200,16k`` -> [8, 200, 16384]."""
    return [parse_size(part) for part in text.split(",") if part.strip()]


def count_list(text: str) -> list[int]:
    """``1,16,256`` -> [1, 16, 256]; every count at least 1."""
    counts: list[int] = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {part!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
        counts.append(value)
    return counts


def parse_rate(text: str) -> str:
    """A rate: round trips per second in all (``20000``, ``20k``) or a share of the
    target's closed-loop rate in the same run (``50%``); returned normalised."""
    text = text.strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(k|%)?", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"not a rate: {text!r} (round trips per second, e.g. 20000 or 20k, or a share "
            "of the closed-loop rate, e.g. 50%)"
        )
    value = float(match.group(1))
    if match.group(2) == "%":
        if not 0 < value <= 1000:
            raise argparse.ArgumentTypeError(f"a share must be above 0 %: {text!r}")
        return f"{value:g}%"
    value *= 1000 if match.group(2) == "k" else 1
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a rate must be above 0: {text!r}")
    return f"{value:g}"


def rate_list(text: str) -> list[str]:
    """``10%,50%,90%`` or ``5k,10k,20k``."""
    return [parse_rate(part) for part in text.split(",") if part.strip()]


def name_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """argparse type for a comma-separated list of names taken from ``choices``."""

    def parse(text: str) -> list[str]:
        # Each once, in the order given: a name twice would measure the same thing twice
        # (and write one transport's report over another's).
        names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown: {', '.join(unknown)} (choose from {', '.join(choices)})"
            )
        return names

    return parse


def format_size(size: int) -> str:
    """8 -> ``8 B``, 16384 -> ``16 KiB``, 1048576 -> ``1 MiB``."""
    for unit, factor in (("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table: three significant digits, thousands separated, or blank."""
    if value is None:
        return ""
    if value >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"

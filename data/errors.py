"""Errors raised by the data pipeline for bad user input, and how their one-line messages name
things."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DataInputError", "DataWarning", "listing", "reason"]


class DataInputError(ValueError):
    """A speed file or value that cannot be used; the message names the file, field or value."""


class DataWarning(UserWarning):
    """Something usable but worth telling the user (gaps, unsorted index, dead sensors)."""


def listing(items: Sequence[object], limit: int = 5) -> str:
    """Up to ``limit`` items, comma-separated, then how many more."""
    shown = ", ".join(str(i) for i in items[:limit])
    if len(items) > limit:
        shown += f" and {len(items) - limit} more"
    return shown


def reason(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())

"""The check every analysis step makes on its input: the columns it reads are there."""

from __future__ import annotations

from typing import Iterable

import pandas as pd


class MissingColumnError(ValueError):
    """A table lacks a column an analysis step needs."""


def require_columns(df: pd.DataFrame, columns: Iterable[str], table: str) -> None:
    """Raise :class:`MissingColumnError` naming every column of ``columns`` absent from ``df``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MissingColumnError(f"{table} table lacks column(s) {missing}; it has {list(df.columns)}")

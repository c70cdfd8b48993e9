"""The one table helper of the book: every table a chapter shows is built by :func:`markdown_table`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["markdown_table", "plus_minus", "mean_and_se"]


def _escape(text: Any) -> str:  # a "|" inside a cell would end the cell
    return str(text).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]],
                   columns: Sequence[str] | None = None, formats: Mapping[str, str] | None = None) -> str:
    """A Markdown table, for ``display(Markdown(...))``.

    Args:
        rows: the rows, either mappings (their keys are the column names) or sequences (then
            ``columns`` names the columns, in order).
        columns: the columns to show, in order (default for mappings: the first row's keys).
        formats: format specs per column, e.g. ``{"max |difference|": ".1e"}``; other floats get
            4 digits. ``None`` is shown as a dash.

    Returns:
        The table as Markdown text.

    Raises:
        ValueError: for no rows, sequence rows without ``columns``, or a row of the wrong length.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: there is nothing to tabulate.")
    if isinstance(rows[0], Mapping):
        columns = list(rows[0]) if columns is None else list(columns)
        rows = [[row[k] for k in columns] for row in rows]
    elif columns is None:
        raise ValueError("rows given as sequences need columns=[...] to name the columns.")
    columns = list(columns)
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(f"row {i} has {len(row)} cells for {len(columns)} columns.")
    formats = formats or {}

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return format(value, formats.get(key, ".4f"))
        return _escape(value)

    lines = ["| " + " | ".join(map(_escape, columns)) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(k, v) for k, v in zip(columns, row)) + " |" for row in rows]
    return "\n".join(lines)


def plus_minus(mean: float | None, se: float | None, digits: int = 3) -> str | None:
    """``"mean ± se"`` with ``digits`` decimals (``None`` for no mean, the mean alone for no error)."""
    if mean is None:
        return None
    if se is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def mean_and_se(values) -> tuple[float, float | None]:
    """The mean of ``values`` and its standard error (``None`` for a single value)."""
    t = torch.as_tensor(values, dtype=torch.float64)
    if t.numel() < 2:
        return float(t.mean()), None
    return float(t.mean()), float(t.std(unbiased=True) / math.sqrt(t.numel()))

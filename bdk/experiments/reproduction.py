"""The paper's numbers, our recorded paper-scale runs and this build's quick runs, side by side (chapter 6).

Each reproduced number of Korattikara et al. (2015) is a :class:`Quantity` (:func:`quantities`): where the paper's value
is in ``data/paper_numbers.json`` and how to read ours from an experiment's results. The same
function reads the results of a run in this process (tensors, tuples) and of a record under
``data/records/`` (JSON lists), so the three columns of :func:`comparison_table` come from one
definition:

* **paper**: the reported mean (± its standard error where the paper gives one);
* **ours, paper scale**: the recorded run (``python -m bdk reproduce NAME --profile paper --record``),
  with its distance from the paper's number in combined standard errors,
  :math:`z = (\\hat\\mu_{\\text{ours}} - \\hat\\mu_{\\text{paper}}) / \\sqrt{se_{\\text{ours}}^2 + se_{\\text{paper}}^2}`;
* **ours, quick**: the run this build of the book just executed (the ``quick`` profile in CI).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..provenance import load_record
from .distill_common import paper_numbers

__all__ = ["Quantity", "quantities", "comparison_table", "distance", "record_or_none", "provenance_note", "side_by_side",
           "as_tensors"]


@dataclass(frozen=True)
class Quantity:
    """One reproduced number.

    Attributes:
        experiment: the registered experiment that computes it (``bdk-boston``).
        label: the row label, e.g. ``"SGLD"``.
        table: the paper's table or figure, e.g. ``"Table 5"``.
        paper: ``(mean, se)`` from the paper (``se`` may be ``None``), or ``None`` when it reports none.
        ours: ``results -> (mean, se)`` (``se`` may be ``None``).
        digits: decimals to show.
        higher_is_better: for the reader: which way is better.
    """

    experiment: str
    table: str
    label: str
    paper: tuple[float, float | None] | None
    ours: Callable[[Any], tuple[float, float | None]]
    digits: int = 3
    higher_is_better: bool = True


def _paper():
    return paper_numbers()["korattikara2015bdk"]


def _rows(table: dict, key: str) -> dict:
    return {r[key]: r for r in table["rows"]}


@functools.lru_cache(maxsize=None)
def quantities() -> tuple[Quantity, ...]:
    """Every reproduced number of the paper (read once from ``data/paper_numbers.json``)."""
    k = _paper()
    t2 = _rows(k["toy_classification"]["table2_kl_to_hmc"], "model")
    t3 = _rows(k["mnist"]["table3_test_error_percent"], "method")
    t4 = _rows(k["mnist"]["table4_test_log_likelihood"], "method")
    t5 = _rows(k["boston"]["table5_test_log_likelihood"], "method")
    out = []
    for model in ("SGD", "SGLD", "Distilled 2-10-2", "Distilled 2-100-2", "Distilled 2-10-10-2"):
        out.append(Quantity("bdk-toy-classification", "Table 2", f"toy 2-D, KL to HMC: {model}",
                            (t2[model]["kl"], None), lambda r, m=model: (float(r["kl"][m]), None), 3, False))
    for method in ("SGD", "SGLD", "Distilled SGLD"):
        out.append(Quantity("bdk-toy-regression", "Figure 2", f"toy 1-D, KL to HMC: {method}", None,
                            lambda r, m=method: (float(r["kl"][m]), None), 4, False))
    for method in ("SGD", "SGLD", "Distilled SGLD"):
        out.append(Quantity("bdk-mnist", "Table 3", f"MNIST, test error %: {method}",
                            (t3[method]["mean"], t3[method]["se"]),
                            lambda r, m=method: tuple(r["summary"][m]["error"]), 2, False))
    for method in ("SGD", "SGLD", "Distilled SGLD"):
        out.append(Quantity("bdk-mnist", "Table 4", f"MNIST, test log-lik.: {method}",
                            (t4[method]["mean"], t4[method]["se"]),
                            lambda r, m=method: tuple(r["summary"][m]["log_lik"]), 4, True))
    for method in ("SGD", "SGLD", "SGLD distilled"):
        out.append(Quantity("bdk-boston", "Table 5", f"Boston, test log-lik.: {method}",
                            (t5[method]["mean"], t5[method]["se"]),
                            lambda r, m=method: tuple(r["summary"][m]), 3, True))
    return tuple(out)





def distance(ours: tuple[float, float | None], paper: tuple[float, float | None] | None) -> float | None:
    """``(ours - paper) / sqrt(se_ours^2 + se_paper^2)``; ``None`` unless both standard errors are known."""
    if paper is None or ours[1] is None or paper[1] is None:
        return None
    combined = math.hypot(ours[1], paper[1])
    return None if combined == 0 else (ours[0] - paper[0]) / combined


def _fmt(value: tuple[float, float | None] | None, digits: int) -> str:
    if value is None:
        return "–"
    mean, se = value
    return f"{mean:.{digits}f}" if se is None else f"{mean:.{digits}f} ± {se:.{digits}f}"


def record_or_none(name: str, label: str | None = None):
    """The record ``data/records/NAME[.LABEL].json`` (``bdk.provenance.load_record``), or ``None``."""
    return load_record(name, label, required=False)


def provenance_note(record, what: str = "Ours, paper scale") -> str:
    """One line under a table: where the recorded column comes from (or that it is missing)."""
    if record is None:
        return f"{what}: not recorded yet."
    return f"{what}: {record.line()}."


def comparison_table(experiments: Sequence[str] | str, quick: dict[str, Any] | None = None,
                     records: dict[str, Any] | None = None, labels: Sequence[str] | None = None,
                     quick_label: str = "ours, quick (this build)",
                     record_label: str = "ours, paper scale (recorded)") -> str:
    """Markdown: one row per :class:`Quantity` of ``experiments``, with the paper's value, the recorded
    paper-scale run, its distance in combined standard errors and this build's quick run.

    Args:
        experiments: names of the experiments whose quantities to show.
        quick: ``name -> results`` of the runs this process made (a missing one gives "–").
        records: ``name -> Record`` (default: ``data/records/NAME.json`` where it exists).
        labels: only the rows whose label contains one of these strings.
        quick_label: the heading of the last column.
        record_label: the heading of the recorded column (e.g. for a record on other data than the paper's).
    """
    experiments = [experiments] if isinstance(experiments, str) else list(experiments)
    quick = quick or {}
    if records is None:
        records = {name: record_or_none(name) for name in experiments}
    header = ["", "paper", record_label, "distance (s.e.)", quick_label]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for q in quantities():
        if q.experiment not in experiments or (labels and not any(s in q.label for s in labels)):
            continue
        rec = records.get(q.experiment)
        ours = q.ours(rec.results) if rec is not None else None
        z = None if ours is None else distance(ours, q.paper)
        zs = "–" if z is None else f"{z:+.1f}"
        if rec is not None and rec.label is not None and z is not None:
            zs = f"– (not the paper's data: {rec.label})"
        if rec is not None and rec.stale:
            zs += " (stale record)"
        quick_value = q.ours(quick[q.experiment]) if q.experiment in quick else None
        lines.append("| " + " | ".join([q.label, _fmt(q.paper, q.digits), _fmt(ours, q.digits), zs,
                                        _fmt(quick_value, q.digits)]) + " |")
    return "\n".join(lines)


def side_by_side(name: str, quick: Any, label: str | None = None, labels: Sequence[str] | None = None):
    """``(record, markdown)`` for a chapter page: the comparison table of experiment ``name`` (the
    paper, the record ``data/records/NAME[.LABEL].json``, this build's ``quick`` results) and the
    record's one-line provenance under it."""
    record = record_or_none(name, label)
    table = comparison_table(name, {name: quick}, {name: record}, labels=labels)
    return record, table + "\n\n" + provenance_note(record)


def as_tensors(results: dict, keys: Sequence[str]) -> dict:
    """A copy of recorded ``results`` with the JSON lists under ``keys`` (and, for a dict, under each of
    its entries) turned back into tensors, so the plotting functions take a record like a fresh run."""
    def conv(v):
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return torch.tensor(v)

    return {**results, **{k: conv(results[k]) for k in keys}}

"""``python -m bdk bench``: the table it prints, and the committed run the Performance page shows."""

from __future__ import annotations

import json
from pathlib import Path

from bdk.experiments import bench

ROOT = Path(__file__).resolve().parents[1]

# Every comparison the bench must make (issue: SGLD/SGD, pSGLD/RMSprop, IVON/Adam, the reference
# packages, distillation, the vectorised predictive, student vs ensemble).
REQUIRED = ("SGLD step / SGD step", "pSGLD step / RMSprop step", "IVON step / Adam step", "posteriors SGLD / bdk SGLD",
            "ivon-opt IVON / bdk IVON", "distillation iteration / SGLD step",
            "vectorised predictive speed-up, MNIST MLP", "vectorised predictive speed-up, toy",
            "ensemble / student at test time", "Boston: 20 stacked splits / 1 split")


def _fake_result() -> dict:
    rows = [
        {"measure": "SGLD step / SGD step", "value": 1.42, "target": 1.10, "better": "lower", "met": False, "note": ""},
        {"measure": "student speed-up", "value": 104.0, "target": 50.0, "better": "higher", "met": True, "note": "x"},
        {"measure": "pSGLD step / RMSprop step", "value": 1.5, "target": None, "better": "lower", "met": None, "note": ""},
    ]
    raw = {"test_time": {"num_samples": [1, 100], "seconds": [0.25, 25.0], "param_bytes": [2**20, 100 * 2**20],
                         "student_seconds": 0.24, "student_param_bytes": 2**20},
           "batch_scaling": {"100": {"ensemble_seconds": 0.4, "student_seconds": 0.002}}}
    return {"rows": rows, "raw": raw, "device": "cpu", "threads": 1, "torch": "2.x"}


def test_format_table_marks_missed_targets_and_lists_the_scaling():
    table = bench.format_table(_fake_result())
    assert "| SGLD step / SGD step | 1.42 | ≤ 1.1 | **no** |" in table
    assert "| student speed-up | 104 | ≥ 50 | yes | x |" in table
    assert "| pSGLD step / RMSprop step | 1.5 |  |  |" in table
    assert "| 100 | 25.0000 | 100.0 |" in table  # S = 100: seconds and MiB of weights
    assert "| 100 | 0.4000 | 0.0020 |" in table  # batch of 100 inputs


def test_the_committed_cpu_run_has_every_measure():
    # book/performance.ipynb shows data/bench/cpu.json; it must come from a full run of the bench.
    result = json.loads((ROOT / "data" / "bench" / "cpu.json").read_text())
    measures = [r["measure"] for r in result["rows"]]
    for needed in REQUIRED:
        assert any(m.startswith(needed) or needed in m for m in measures), needed
    for r in result["rows"]:
        assert r["value"] is not None and r["value"] > 0, r
        if r["target"] is not None:
            assert r["met"] == (r["value"] <= r["target"] if r["better"] == "lower" else r["value"] >= r["target"])
    assert result["date"] and result["machine"]
    bench.format_table(result)  # renders


def test_cost_figure_draws_both_panels():
    import matplotlib

    matplotlib.use("Agg")
    fig = bench.cost_figure(_fake_result())
    ax1, ax2 = fig.axes
    assert ax1.get_xscale() == "log" and ax2.get_yscale() == "log"
    assert [t.get_text() for t in ax1.get_legend().get_texts()] == ["SGLD ensemble", "student"]
    assert list(ax1.lines[0].get_ydata()) == [0.25, 25.0]
    matplotlib.pyplot.close(fig)

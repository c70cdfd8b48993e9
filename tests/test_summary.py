"""bdk.experiments.summary: the landing page's chapter map, run-time table and reproduction summary."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from bdk.experiments import summary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_every_chapter_notebook_exists_and_is_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text()
    listed = [nb for ch in summary.CHAPTERS for nb in ch.notebooks]
    assert len(listed) == len(set(listed))
    for nb in listed:
        assert (ROOT / "book" / f"{nb}.ipynb").is_file(), nb
        assert f"book/{nb}" in toc, nb
    numbers = {ch.number for ch in summary.CHAPTERS}
    assert all(set(ch.uses) <= numbers for ch in summary.CHAPTERS)


def test_chapter_map_has_a_box_per_chapter_and_an_arrow_per_dependency():
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig = summary.chapter_map()
    ax = fig.axes[0]
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(boxes) == len(summary.CHAPTERS)
    assert len(arrows) == sum(len(ch.uses) for ch in summary.CHAPTERS)
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "SGLD" in texts and "IVON" in texts and "knowledge" in texts
    matplotlib.pyplot.close(fig)


def test_run_times_table_sums_a_chapter_and_says_what_was_not_measured(tmp_path):
    times = {"date": "2026-01-01", "machine": "test CPU", "profile": "quick",
             "notebooks": {"langevin": 40.0, "bdk-toy": 60.0, "bdk-toy-regression": 30.0, "bdk-mnist": 50.0,
                           "bdk-boston": 20.0, "bdk-teachers": 100.0}}
    (tmp_path / "quick-cpu.json").write_text(json.dumps(times))
    table = summary.run_times_table(folder=tmp_path)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()
            if line.startswith("| ") and "chapter" not in line}
    assert rows["1. Langevin dynamics"] == ["40 s", "not measured"]
    assert rows["6. Bayesian dark knowledge"] == ["4.3 min", "not measured"]  # 260 s over five notebooks
    assert rows["3. SGLD"] == ["–", "not measured"]  # no time recorded for sgld
    assert "measured 2026-01-01 on test CPU" in table and "no run recorded yet" in table
    (tmp_path / "quick-cpu.json").write_text(json.dumps({"seconds": 1}))
    with pytest.raises(ValueError, match="notebooks"):
        summary.run_times_table(folder=tmp_path)


def test_committed_cpu_timings_cover_every_notebook():
    # The landing page reads this file; it is written by `scripts/execute_notebooks.py --times`.
    path = summary.TIMINGS_DIR / "quick-cpu.json"
    assert path.is_file(), f"{path} is missing: run scripts/execute_notebooks.py --times {path}"
    recorded = json.loads(path.read_text())["notebooks"]
    for ch in summary.CHAPTERS:
        for nb in ch.notebooks:
            assert nb in recorded and recorded[nb] > 0, nb


def test_reproduction_table_sets_the_papers_numbers_beside_the_results(monkeypatch, tmp_path):
    """Three columns: the paper (data/paper_numbers.json), the recorded paper-scale run with its
    distance in combined standard errors, and this build's run; SGD rows included."""
    from bdk import provenance as P
    from bdk.experiments import registry

    toy = {"kl": {"SGD": 0.061, "SGLD": 0.0123, "Distilled 2-10-2": 0.0456, "Distilled 2-100-2": 0.02,
                  "Distilled 2-10-10-2": 0.03}}
    fake = {
        "bdk-toy-classification": toy,
        "bdk-toy-regression": {"kl": {"SGD": 1.1, "SGLD": 0.01, "Distilled SGLD": 0.05}},
        "bdk-mnist": {"num_runs": 1, "num_train": 4000, "num_test": 1000, "subset": True,
                      "summary": {m: {"error": (e, None), "log_lik": (l, None)} for m, e, l in
                                  (("SGD", 6.1, -0.25), ("SGLD", 5.9, -0.238), ("Distilled SGLD", 7.5, -0.2525))},
                      "cost": {"cpu": {"num_samples": [1, 10, 100], "seconds": [0.01, 0.1, 2.0],
                                       "student_seconds": 0.01, "num_inputs": 1000, "device": "cpu"}}},
        "bdk-boston": {"num_splits": 5, "summary": {"SGD": (-2.63, 0.1), "SGLD": (-2.675, 0.05),
                                                    "SGLD distilled": (-2.826, 0.06)}},
    }
    monkeypatch.setattr(registry, "run_experiment", lambda name, profile=None, verbose=False: fake[name])
    monkeypatch.setenv("BDK_RECORDS_DIR", str(tmp_path))
    boston = registry.get("bdk-boston").configs["paper"]
    P.write_record("bdk-boston", {"num_splits": 20, "summary": {"SGD": [-2.80, 0.10], "SGLD": [-2.50, 0.05],
                                                              "SGLD distilled": [-2.55, 0.06]}},
                   P.provenance(boston, profile="paper", wall_seconds=500.0, cpu_seconds=490.0))
    table = summary.reproduction_table(profile="quick")
    lines = table.splitlines()
    assert lines[0] == "|  | paper | ours, paper scale (recorded) | distance (s.e.) | ours, this build (`quick`) |"
    assert "| toy 2-D, KL to HMC: SGD | 0.246 | – | – | 0.061 |" in table
    assert "| toy 2-D, KL to HMC: Distilled 2-10-2 | 0.031 | – | – | 0.046 |" in table
    assert "| MNIST, test error %: SGLD | 1.27 ± 0.01 | – | – | 5.90 |" in table
    # (-2.50 - -2.306) / hypot(0.05, 0.1205) = -1.49
    assert "| Boston, test log-lik.: SGLD | -2.306 ± 0.120 | -2.500 ± 0.050 | -1.5 | -2.675 ± 0.050 |" in table
    assert "| Boston, test log-lik.: SGD | -2.764 ± 0.153 | -2.800 ± 0.100 | -0.2 | -2.630 ± 0.100 |" in table
    assert "`bdk-boston`: recorded" in table and "8.3 min wall" in table
    assert "`bdk-mnist`: not recorded yet." in table
    assert "200× faster" in table  # 2.0 s / 0.01 s for the 100-sample ensemble
    assert "4,000 train / 1,000 test digits (a subset), 1 run(s)" in table

"""``python -m bdk bench``: the table it prints, and the committed run the Performance page shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bdk import timing
from bdk.experiments import bench

ROOT = Path(__file__).resolve().parents[1]

# Every comparison the bench must make (issue: SGLD/SGD, pSGLD/RMSprop, IVON/Adam, the reference
# packages, distillation, the vectorised predictive, student vs ensemble).
REQUIRED = ("SGLD step / (SGD step + N(0,1) draw)", "IVON step / (Adam step + N(0,1) draw)", "SGLD step / SGD step", "pSGLD step / RMSprop step", "IVON step / Adam step", "posteriors SGLD / bdk SGLD",
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


# ------------------------------------------------------------------------------------------------
# the step costs: one interleaved run, the floors "SGD + draw" and "Adam + draw"
# ------------------------------------------------------------------------------------------------


def test_step_costs_times_every_optimiser_and_the_floors_in_one_run():
    sizes = (20, 8, 3)
    r = bench.step_costs(sizes=sizes, batch_size=10, repeats=2, steps_per_repeat=2, warmup=1, device="cpu",
                         include_references=False)
    med = r["median_seconds"]
    assert set(med) == {"SGD", "SGLD", "SGLD, T=0", "RMSprop", "pSGLD", "Adam", "IVON", "draw", "SGD + draw",
                        "Adam + draw"}
    assert all(v > 0 for v in med.values())
    assert r["num_params"] == 20 * 8 + 8 + 8 * 3 + 3
    # the two ratios, against the floors timed in the same run
    assert r["sgld_over_sgd_plus_draw"] == pytest.approx(med["SGLD"] / med["SGD + draw"])
    assert r["ivon_over_adam_plus_draw"] == pytest.approx(med["IVON"] / med["Adam + draw"])
    assert r["sgld_over_sgd"] == pytest.approx(med["SGLD"] / med["SGD"])
    assert r["ivon_without_draw_over_adam"] == pytest.approx((med["IVON"] - med["draw"]) / med["Adam"])


def test_the_draw_is_a_plain_normal_of_all_weights():
    mlp = bench.MlpStepBench((5, 4, 3), batch_size=2, device="cpu")
    assert mlp.num_params == sum(p.numel() for p in bench.D.mlp((5, 4, 3)).parameters())
    draw = mlp.draw_fn(seed=7)
    g = torch.Generator().manual_seed(7)
    first, second = draw(), draw()
    assert torch.equal(first, torch.empty(mlp.num_params).normal_(generator=g))
    assert torch.equal(second, torch.empty(mlp.num_params).normal_(generator=g))


def test_every_runner_starts_from_the_same_weights():
    mlp = bench.MlpStepBench((5, 4, 3), batch_size=2, device="cpu")
    a, b = mlp.fresh(), mlp.fresh()
    assert a is not b
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), mlp.base.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_predictive_speedup_variants_agree():
    s = bench.predictive_speedup(sizes=(4, 6, 2), num_samples=5, num_inputs=20, repeats=1, device="cpu")
    assert s["max_abs_diff"] < 1e-4 * max(1.0, s["output_scale"])
    assert set(s["speedup_over_loop"]) == {"loop", "vmap, one call", "vmap, chunked", "fast, one call", "fast, chunked"}
    assert s["speedup_over_loop"]["loop"] == 1.0


def test_format_costs_explains_the_floor_rows():
    result = _fake_result()
    result["rows"] = [
        {"measure": "SGLD step / (SGD step + N(0,1) draw)", "value": 1.04, "target": 1.05, "better": "lower",
         "met": True, "note": "NOTE-SGLD"},
        {"measure": "IVON step / (Adam step + N(0,1) draw)", "value": 1.2, "target": 1.10, "better": "lower",
         "met": False, "note": "NOTE-IVON"},
    ]
    result["raw"]["steps"] = {"num_params": 478_410}
    text = bench.format_costs(result)
    assert "NOTE-" not in text  # each row has its own explanation, not the bench's note
    assert "| SGLD step / (SGD step + N(0,1) draw) | 1.04 | SGLD against its floor" in text
    assert "478,410 weights" in text
    assert "| IVON step / (Adam step + N(0,1) draw) | 1.2 | IVON against the same floor" in text


def test_the_committed_run_is_still_explained():
    # book/performance.ipynb renders data/bench/cpu.json with format_costs: every row has a meaning
    result = json.loads((ROOT / "data" / "bench" / "cpu.json").read_text())
    for r in result["rows"]:
        assert bench._meaning(r["measure"], r["value"], result["raw"]) is not None, r["measure"]


# ------------------------------------------------------------------------------------------------
# the one timing helper
# ------------------------------------------------------------------------------------------------


def test_time_interleaved_rotates_the_order_and_counts_every_call():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = timing.time_interleaved(runners, repeats=3, steps_per_repeat=2, device="cpu", warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # the warm-up
    rounds = calls[3:]
    assert rounds == ["a", "a", "b", "b", "c", "c", "b", "b", "c", "c", "a", "a", "c", "c", "a", "a", "b", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_best_time_and_stopwatch_measure_the_wall_clock():
    import time

    assert timing.best_time(lambda: time.sleep(0.02), "cpu", repeats=2) >= 0.02
    with timing.Stopwatch() as clock:
        time.sleep(0.02)
        assert clock.elapsed() >= 0.02
    assert 0.02 <= clock.seconds < 1.0
    assert 0 <= clock.cpu_seconds < clock.seconds  # sleeping costs no CPU time
    with pytest.raises(ValueError):
        timing.best_time(lambda: None, "cpu", repeats=0)

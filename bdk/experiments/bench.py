"""``python -m bdk bench``: the cost of each method, measured side by side as ratios.

Every ratio compares two things timed in the same run, interleaved, as the median of repeats, so it
means something on a noisy machine. Targets (goals, not tests):

- SGLD step / SGD step <= 1.10; pSGLD / RMSprop reported; `posteriors` SGLD / bdk SGLD >= 1;
- IVON step / Adam step <= 1.25; `ivon-opt` IVON / bdk IVON >= 1;
- one distillation iteration / one SGLD step <= 2.2;
- 20 stacked Boston splits / one split, per iteration of Algorithm 1 <= 3;
- S = 100 ensemble / student at test time >= 50;
- vectorised predictive of S = 100 samples vs a Python loop: >= 10x on the toy net, >= 1x on the
  MNIST MLP on a CPU, >= 5x on a GPU.

All on the MNIST MLP 784-400-400-10 with batch 100 unless said otherwise.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from typing import Any

import torch

__all__ = ["run", "distillation_step_ratio", "sgld_noise_breakdown", "stacked_members_ratio", "format_table",
           "format_costs", "format_predictive", "cost_figure"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(runners: dict[str, Any], repeats: int, steps_per_repeat: int, device,
                     warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each runner, measured side by side.

    Every runner is called ``warmup`` times first; then each of ``repeats`` rounds times
    ``steps_per_repeat`` calls of every runner, in an order that rotates from round to round, so that
    a machine that slows down or speeds up affects all of them alike. Returns one list of
    per-call seconds (one entry per round) for each runner name.
    """
    device = torch.device(device)
    names = list(runners)
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps_per_repeat):
                runners[k]()
            _sync(device)
            times[k].append((time.perf_counter() - t0) / steps_per_repeat)
    return times


def distillation_step_ratio(batch_size: int = 100, repeats: int = 15, steps_per_repeat: int = 10,
                            device=None) -> dict[str, Any]:
    """Time one Distilled-SGLD iteration (teacher SGLD step + student SGD step) against one SGLD step.

    Both on the MNIST MLP 784-400-400-10 (teacher and student), random inputs, interleaved repeats.
    """
    from .. import distill as D
    from .._runtime import get_device

    device = torch.device(device) if device is not None else get_device()
    gen = torch.Generator(device=device).manual_seed(0)
    num_data = 10 * batch_size
    x = torch.rand(num_data, 784, device=device, generator=gen)
    y = torch.randint(0, 10, (num_data,), device=device, generator=gen)
    sizes = (784, 400, 400, 10)

    def make_distiller():
        teacher = D.SGLDTeacher(D.mlp(sizes).to(device), num_data=num_data, prior_precision=1.0, lr=1e-6,
                                generator=torch.Generator(device=device).manual_seed(1))
        student = D.Student.sgd(D.mlp(sizes).to(device), lr=1e-3, prior_precision=1e-3)
        return D.Distiller(teacher, student, x, y, D.gaussian_noise_inputs(x, 0.01), batch_size=batch_size,
                           generator=torch.Generator(device=device).manual_seed(2))

    distiller = make_distiller()
    sgld_only = make_distiller()
    sgld_only.burn_in = 10**12  # the same object, students never step: a plain SGLD step with the same overheads

    runners = {"distillation iteration": distiller.step, "SGLD step": sgld_only.step}
    timings = time_interleaved(runners, repeats, steps_per_repeat, device)
    med = {k: statistics.median(v) for k, v in timings.items()}
    return {"median_seconds": med, "distill_over_sgld": med["distillation iteration"] / med["SGLD step"],
            "device": str(device)}


def sgld_noise_breakdown(sizes=(784, 400, 400, 10), batch_size: int = 100, repeats: int = 15,
                         steps_per_repeat: int = 10, device=None) -> dict[str, Any]:
    """Split the cost of an SGLD step into the SGD-like part and the Gaussian draw.

    Interleaves (rotating order, median over repeats) four things on the MNIST MLP: an SGD step on
    the mean loss; an SGLD step; an SGLD step at ``temperature=0`` (the same code path without the
    noise: drift, finiteness check, one ``_foreach_add_``); and the draw alone, i.e. SGLD's own
    noise generator filling its flat buffer of as many N(0, 1) floats as the network has weights
    (``plain normal_`` times one ``normal_()`` call on that buffer for comparison). The ratios say how
    much of the SGLD/SGD gap is the draw.
    """
    from .._runtime import get_device
    from ..samplers import SGLD
    from .sgld import MlpStepBench

    device = torch.device(device) if device is not None else get_device()
    mlp = MlpStepBench(sizes, batch_size, device)
    runners = {}
    runners["SGD"], _ = mlp.step_fn(lambda p: torch.optim.SGD(p, lr=1e-3), mean_loss=True)
    runners["SGLD"], sgld = mlp.step_fn(lambda p: SGLD(p, lr=1e-8), mean_loss=False)
    runners["SGLD, T=0"], _ = mlp.step_fn(lambda p: SGLD(p, lr=1e-8, temperature=0.0), mean_loss=False)
    num_params = sum(p.numel() for p in mlp.base.parameters())
    flat = torch.empty(num_params, device=device)
    runners["Gaussian draw (SGLD's generator)"] = lambda: sgld._noise.fill_(flat, 1.0)
    runners["Gaussian draw (plain normal_)"] = lambda: flat.normal_()
    times = time_interleaved(runners, repeats, steps_per_repeat, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    sgd = med["SGD"]
    return {
        "median_seconds": med,
        "min_seconds": {k: min(v) for k, v in times.items()},
        "sgld_over_sgd": med["SGLD"] / sgd,
        "sgld_t0_over_sgd": med["SGLD, T=0"] / sgd,
        "draw_over_sgd": med["Gaussian draw (SGLD's generator)"] / sgd,
        "plain_normal_over_sgd": med["Gaussian draw (plain normal_)"] / sgd,
        "draw_ns_per_float": 1e9 * med["Gaussian draw (SGLD's generator)"] / num_params,
        "num_params": num_params,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def stacked_members_ratio(members: int = 20, repeats: int = 15, steps_per_repeat: int = 50, device=None) -> dict[str, Any]:
    """One iteration of Algorithm 1 on Boston housing (13-50-1 teacher, 13-50-2 student, the paper
    profile's settings) for ``members`` splits stacked (``bdk.distill.StackedDistiller``), for one
    split stacked, and for one split through the serial ``Distiller`` (``SGLDTeacher`` + ``Student``),
    interleaved. ``stacked_over_one`` is what ``members`` splits cost against one; ``serial_over_stacked``
    is the speed-up of the stacked path over running the splits one after another."""
    import dataclasses

    from .. import distill as D
    from .._runtime import get_device
    from ..data import load_boston
    from .distill import BOSTON_CONFIGS, boston_stacked_distiller

    device = torch.device(device) if device is not None else get_device()
    cfg = dataclasses.replace(BOSTON_CONFIGS["paper"], burn_in=0)
    splits = [load_boston(split=k) for k in range(members)]

    def stacked(C):
        x = torch.stack([s.x_train for s in splits[:C]]).to(device)
        y = torch.stack([s.y_train for s in splits[:C]]).to(device)
        xt = torch.stack([s.x_test for s in splits[:C]]).to(device)
        yt = torch.stack([s.y_test for s in splits[:C]]).to(device)
        return boston_stacked_distiller(cfg, x, y, xt, yt, torch.Generator(device=device).manual_seed(0)).step

    def serial():
        s = splits[0]
        x, y = s.x_train.to(device), s.y_train.to(device)
        d = x.shape[1]
        g = torch.Generator(device=device).manual_seed(0)
        teacher = D.SGLDTeacher(D.mlp((d, cfg.hidden, 1)).to(device), x.shape[0], cfg.prior_precision, cfg.teacher_lr,
                                likelihood="regression", noise_precision=1.0, noise_prior=cfg.noise_prior, x_full=x,
                                y_full=y, generator=g, noise_every=cfg.noise_every)
        student = D.Student.sgd(D.mlp((d, cfg.hidden, 2)).to(device), cfg.student_lr, cfg.student_prior_precision)
        distiller = D.Distiller(teacher, student, x, y, D.gaussian_noise_inputs(x, cfg.input_noise_std),
                                task="regression", batch_size=cfg.batch_size, student_batch_size=cfg.student_batch_size,
                                thin=cfg.thin, ensemble_inputs={"test": s.x_test.to(device)},
                                ensemble_targets={"test": s.y_test.to(device)}, generator=g)
        return distiller.step

    runners = {f"{members} splits stacked": stacked(members), "1 split stacked": stacked(1), "1 split serial": serial()}
    times = time_interleaved(runners, repeats, steps_per_repeat, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "median_seconds": med,
        "stacked_over_one": med[f"{members} splits stacked"] / med["1 split stacked"],
        "serial_over_stacked": members * med["1 split serial"] / med[f"{members} splits stacked"],
        "members": members,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def run(repeats: int = 30, device=None) -> dict[str, Any]:
    """Run every measurement and return the table rows and the raw timings."""
    from . import distill as dx
    from . import ivon as ivx
    from . import sgld as sx
    from .. import distill as D
    from .._runtime import get_device

    device = torch.device(device) if device is not None else get_device()
    raw: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []

    def row(name, value, target, better="lower", note=""):
        met = None if (value is None or target is None) else (value <= target if better == "lower" else value >= target)
        rows.append({"measure": name, "value": value, "target": target, "better": better, "met": met, "note": note})

    raw["sgld"] = sx.step_cost_ratios(repeats=repeats, device=device)
    row("SGLD step / SGD step", raw["sgld"]["sgld_over_sgd"], 1.10)
    row("pSGLD step / RMSprop step", raw["sgld"]["psgld_over_rmsprop"], None)
    raw["sgld_noise"] = sgld_noise_breakdown(repeats=repeats, device=device)
    row("  SGLD step at T=0 (no noise) / SGD step", raw["sgld_noise"]["sgld_t0_over_sgd"], None,
        note="the SGLD code path without the Gaussian draw")
    row("  N(0,1) draw of all weights / SGD step", raw["sgld_noise"]["draw_over_sgd"], None,
        note=f"{raw['sgld_noise']['num_params']:,} floats, {raw['sgld_noise']['draw_ns_per_float']:.1f} ns each")
    if "posteriors_sgld_over_bdk_sgld" in raw["sgld"]:
        row("posteriors SGLD / bdk SGLD", raw["sgld"]["posteriors_sgld_over_bdk_sgld"], 1.0, better="higher")

    raw["ivon"] = ivx.step_cost_ratios(repeats=repeats, device=device)
    row("IVON step / Adam step", raw["ivon"]["ivon_over_adam"], 1.25)
    if raw["ivon"].get("ivon_without_normal_over_adam") is not None:
        row("  IVON step less its N(0,1) draw / Adam step", raw["ivon"]["ivon_without_normal_over_adam"], None,
            note="the draw must stay the reference's (same torch generator, same order)")
    if raw["ivon"].get("ivon_over_ivon_opt") is not None:
        row("ivon-opt IVON / bdk IVON", 1.0 / raw["ivon"]["ivon_over_ivon_opt"], 1.0, better="higher")

    raw["distill"] = distillation_step_ratio(repeats=max(5, repeats // 2), device=device)
    row("distillation iteration / SGLD step", raw["distill"]["distill_over_sgld"], 2.2)

    raw["stacked"] = stacked_members_ratio(repeats=max(5, repeats // 2), device=device)
    per_iter = 1e3 * raw["stacked"]["median_seconds"]["20 splits stacked"]
    row("Boston: 20 stacked splits / 1 split, per iteration", raw["stacked"]["stacked_over_one"], 3.0,
        note=f"{per_iter:.2f} ms per iteration for all 20 (13-50-1 teacher + 13-50-2 student)")
    row("Boston: 20 splits one after another / stacked", raw["stacked"]["serial_over_stacked"], None, better="higher",
        note="the serial Distiller per split against StackedDistiller")

    raw["predictive_mlp"] = sx.predictive_speedup(sizes=(784, 400, 400, 10), num_samples=100, num_inputs=1000,
                                                  device=device)
    # the toy net takes ~0.1 s per repeat: more repeats make its median robust to a busy machine
    raw["predictive_toy"] = sx.predictive_speedup(sizes=(2, 10, 2), num_samples=100, num_inputs=1000,
                                                  repeats=max(15, repeats), device=device)
    best_mlp = max(v for k, v in raw["predictive_mlp"]["speedup_over_loop"].items() if k != "loop")
    best_toy = max(v for k, v in raw["predictive_toy"]["speedup_over_loop"].items() if k != "loop")
    row("vectorised predictive speed-up, MNIST MLP, S=100", best_mlp, 5.0 if device.type == "cuda" else 1.0,
        better="higher")
    row("vectorised predictive speed-up, toy 2-10-2, S=100", best_toy, 10.0, better="higher")

    # Student vs ensemble at test time, and how the ensemble's cost grows with S and the batch size.
    sizes = (784, 400, 400, 10)
    model = D.mlp(sizes).to(device)
    gen = torch.Generator().manual_seed(0)
    vectors = 0.05 * torch.randn(100, D.mlp_num_params(sizes), generator=gen)
    student = D.mlp(sizes).to(device)
    x = torch.rand(10_000, 784, generator=gen).to(device)
    raw["test_time"] = dx.time_predictive(model, vectors, student, x, num_samples=(1, 10, 100), repeats=3)
    ensemble_100 = raw["test_time"]["seconds"][-1]
    row("S=100 ensemble / student at test time (10,000 inputs)", ensemble_100 / raw["test_time"]["student_seconds"],
        50.0, better="higher")
    raw["batch_scaling"] = {}
    for n in (100, 1000, 10_000):
        t = dx.time_predictive(model, vectors, student, x[:n], num_samples=(100,), repeats=3)
        raw["batch_scaling"][n] = {"ensemble_seconds": t["seconds"][0], "student_seconds": t["student_seconds"]}
    return {"rows": rows, "raw": raw, "device": str(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "date": datetime.date.today().isoformat(), "machine": _machine(device)}


def _machine(device: torch.device) -> str:
    """One line naming the hardware the bench ran on."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    processor = platform.processor() or platform.machine()
    return (f"{processor} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} intra-op thread(s), "
            f"torch {torch.__version__}")


def format_table(result: dict[str, Any]) -> str:
    """The bench rows as a Markdown table."""
    lines = [f"Device: {result['device']} ({result['threads']} threads), torch {result['torch']}", "",
             "| measure | value | target | met | note |", "| --- | ---: | ---: | :---: | --- |"]
    for r in result["rows"]:
        target = "" if r["target"] is None else (("≤ " if r["better"] == "lower" else "≥ ") + f"{r['target']:g}")
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['measure']} | {r['value']:.3g} | {target} | {met} | {r.get('note', '')} |")
    tt = result["raw"]["test_time"]
    lines += ["", "Ensemble cost against S (10,000 inputs):", "", "| S | seconds | parameters (MB) |",
              "| ---: | ---: | ---: |"]
    for s, sec, b in zip(tt["num_samples"], tt["seconds"], tt["param_bytes"]):
        lines.append(f"| {s} | {sec:.4f} | {b / 2**20:.1f} |")
    lines.append(f"| student | {tt['student_seconds']:.4f} | {tt['student_param_bytes'] / 2**20:.1f} |")
    lines += ["", "Cost against the batch size (S = 100):", "", "| inputs | ensemble s | student s |", "| ---: | ---: | ---: |"]
    for n, v in result["raw"]["batch_scaling"].items():
        lines.append(f"| {n} | {v['ensemble_seconds']:.4f} | {v['student_seconds']:.4f} |")
    return "\n".join(lines)


def _meaning(measure: str, value: float, raw: dict[str, Any]) -> str | None:
    """What one bench row means for a reader (None for a row this page does not explain)."""
    m = measure.strip()
    noise = raw.get("sgld_noise", {})
    ivon = raw.get("ivon", {})
    n = noise.get("num_params") or ivon.get("num_params")
    weights = f"{n:,} weights" if n else "every weight"
    if m == "SGLD step / SGD step":
        return (f"SGLD is SGD plus one Gaussian draw per weight and step ({weights}); the two indented rows "
                "below show that the draw is the difference.")
    if m.startswith("SGLD step at T=0"):
        return "SGLD's code without the draw runs as fast as SGD's."
    if m.startswith("N(0,1) draw of all weights"):
        ns = noise.get("draw_ns_per_float")
        each = f" ({ns:.1f} ns per number)" if ns else ""
        return (f"drawing {weights.split()[0]} standard normal numbers{each}: on a CPU PyTorch's generator runs "
                "serially, so the draw costs a good part of a step.")
    if m == "pSGLD step / RMSprop step":
        return "the same draw on top of RMSprop, with RMSprop's preconditioner applied to the noise."
    if m == "posteriors SGLD / bdk SGLD":
        return f"the SGLD step of the `posteriors` package takes {value:.2f} times as long as bdk's."
    if m == "IVON step / Adam step":
        return ("IVON keeps Adam's three numbers per weight, and on top draws one Gaussian number per weight, puts "
                "the sampled weights into the model and back, and updates its Hessian estimate.")
    if m.startswith("IVON step less its N(0,1) draw"):
        full = ivon.get("ivon_over_adam")
        share = f": the draw is {full - value:.2f} of the {full - 1:.2f} Adam steps that IVON adds" if full else ""
        return (f"IVON without its Gaussian draw{share}. The draw stays as it is, so that bdk's IVON reproduces "
                "`ivon-opt`'s random numbers exactly.")
    if m == "ivon-opt IVON / bdk IVON":
        return (f"the reference package `ivon-opt` takes {value:.2f} times as long per step as bdk's IVON, which "
                "runs the same update as `torch._foreach_*` operations on preallocated buffers.")
    if m == "distillation iteration / SGLD step":
        return ("one iteration of Bayesian dark knowledge is a teacher SGLD step plus a student step on the "
                "teacher's predictions.")
    if m.startswith("vectorised predictive speed-up, MNIST MLP"):
        return ("the predictive of S = 100 stored samples on 1,000 inputs with the samples' weights stacked "
                "(batched matrix products), against a Python loop over the samples: on the 784-400-400-10 network "
                "each sample's matrix products already keep the CPU busy, so stacking gains little here.")
    if m.startswith("vectorised predictive speed-up, toy"):
        return "the same on the small 2-10-2 network, where the loop's per-sample overhead dominates."
    if m.startswith("S=100 ensemble / student at test time"):
        tt = raw.get("test_time", {})
        size = ""
        if tt.get("param_bytes") and tt.get("student_param_bytes"):
            size = (f", and it holds {tt['param_bytes'][-1] / 2**20:.0f} MB of weights against the student's "
                    f"{tt['student_param_bytes'] / 2**20:.1f} MB")
        return ("the distilled student costs one forward pass where the ensemble of 100 samples costs 100"
                f"{size}: the saving that motivates distillation.")
    if m.startswith("Boston: 20 stacked splits / 1 split"):
        per = raw.get("stacked", {}).get("median_seconds", {}).get("20 splits stacked")
        ms = f" ({1e3 * per:.2f} ms per iteration for all 20)" if per else ""
        return ("the 20 random splits of the Boston experiment trained as one stacked model: an iteration for all "
                f"20 costs this many times one split's{ms}.")
    if m.startswith("Boston: 20 splits one after another"):
        return "training the 20 splits one after another instead takes this many times as long as stacked."
    return None


def format_costs(result: dict[str, Any]) -> str:
    """The bench rows for a reader: a Markdown table with the columns measure, value and what it means.

    Every value is a ratio of two costs measured side by side; the rows the bench adds for its own
    bookkeeping (targets, whether they were met) are not shown. Rows this function does not know are
    listed with their note.
    """
    lines = ["| measure | value | what it means |", "| --- | ---: | --- |"]
    raw = result.get("raw", {})
    for r in result["rows"]:
        note = _meaning(r["measure"], r["value"], raw)
        if note is None:
            note = r.get("note", "")
        measure = r["measure"].strip()
        if r["measure"].startswith("  "):
            measure = "&emsp;" + measure
        lines.append(f"| {measure} | {r['value']:.3g} | {note} |")
    return "\n".join(lines)


_PREDICTIVE_VARIANTS = {
    "loop": "a Python loop over the samples",
    "vmap, one call": "`torch.func.vmap` over all samples in one call",
    "vmap, chunked": "`vmap` in chunks of samples",
    "fast, one call": "stacked weights, batched matrix products, one call",
    "fast, chunked": "stacked weights in chunks of samples",
}


def format_predictive(result: dict[str, Any]) -> str:
    """Markdown: the speed-up of each way of computing the predictive of stored samples over a Python loop.

    From the bench's ``predictive_mlp`` and ``predictive_toy`` measurements (S = 100 samples, 1,000
    inputs), with the chunk size the sample store picks and the largest difference between the
    variants' outputs.
    """
    runs = {"MNIST MLP 784-400-400-10": result["raw"]["predictive_mlp"],
            "toy 2-10-2": result["raw"]["predictive_toy"]}
    lines = ["| how the predictive is computed | " + " | ".join(runs) + " |", "| --- |" + " ---: |" * len(runs)]
    for key, label in _PREDICTIVE_VARIANTS.items():
        cells = []
        for run in runs.values():
            speedup = run["speedup_over_loop"].get(key)
            sec = run["median_seconds"].get(key)
            cells.append("" if speedup is None else f"{speedup:.2f}× ({1e3 * sec:.0f} ms)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    chunks = ", ".join(f"{run['default_chunk_size']} samples ({name})" for name, run in runs.items())
    agree = max(run["max_abs_diff"] for run in runs.values())
    scale = max(run["output_scale"] for run in runs.values())
    lines += ["", f"Speed-up over the loop (median time). Chunks: {chunks}, the store's default for this machine. "
              f"All variants agree to within {agree:.0e}, on outputs as large as {scale:.1f}."]
    return "\n".join(lines)


def cost_figure(result: dict[str, Any]):
    """Two panels from one bench run: the ensemble's test-time cost against the number of samples
    ``S`` (with the student's), and both costs against the number of inputs."""
    import matplotlib.pyplot as plt

    from ..plotting import COLORS

    tt, batch = result["raw"]["test_time"], result["raw"]["batch_scaling"]
    sizes = sorted(int(n) for n in batch)
    per_size = [batch[str(n)] if str(n) in batch else batch[n] for n in sizes]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.5, 3.2))
    ax1.loglog(tt["num_samples"], tt["seconds"], "o-", color=COLORS["SGLD"], label="SGLD ensemble")
    ax1.axhline(tt["student_seconds"], color=COLORS["student"], ls="--", label="student")
    ax1.set(xlabel="samples in the ensemble, $S$", ylabel="seconds for 10,000 inputs", title="Cost against $S$")
    ax2.loglog(sizes, [v["ensemble_seconds"] for v in per_size], "o-", color=COLORS["SGLD"], label="ensemble, $S = 100$")
    ax2.loglog(sizes, [v["student_seconds"] for v in per_size], "s--", color=COLORS["student"], label="student")
    ax2.set(xlabel="inputs", ylabel="seconds", title="Cost against the number of inputs")
    # room below the student's line, which would otherwise sit on the lower edge of the panel
    low = min([*tt["seconds"], tt["student_seconds"]])
    ax1.set_ylim(low / 2, 2 * max([*tt["seconds"], tt["student_seconds"]]))
    for ax in (ax1, ax2):
        ax.legend(loc="upper left")
    fig.tight_layout()
    return fig

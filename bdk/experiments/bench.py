"""``python -m bdk bench``: the cost of each method, measured side by side as ratios.

Every ratio compares things timed in the same run, interleaved (:func:`bdk.timing.time_interleaved`),
as the median of repeats, so it means something on a noisy machine. Targets (goals, not tests):

- SGLD step / (SGD step + one N(0, 1) draw of all weights) <= 1.05: on a CPU the draw is serial
  and costs a good part of a step, so "SGD step + draw" is the floor of any SGLD step;
- IVON step / (Adam step + draw) <= 1.10, the same floor for IVON;
- SGLD step / SGD step <= 1.10 on a GPU (reported on a CPU); pSGLD / RMSprop reported;
- `posteriors` SGLD / bdk SGLD >= 1; `ivon-opt` IVON / bdk IVON >= 1;
- one distillation iteration / one SGLD step <= 2.2;
- 20 stacked Boston splits / one split, per iteration of Algorithm 1 <= 3;
- S = 100 ensemble / student at test time >= 50;
- vectorised predictive of S = 100 samples vs a Python loop: >= 10x on the toy net, >= 1x on the
  MNIST MLP on a CPU, >= 5x on a GPU.

All on the MNIST MLP 784-400-400-10 with batch 100 unless said otherwise.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import os
import platform
import statistics
import warnings
from typing import Any, Sequence

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn import functional as F

from .. import distill as D
from .._runtime import get_device
from ..data import load_boston
from ..optim import IVON
from ..plotting import COLORS
from ..samplers import SGLD, PosteriorSamples, neg_log_posterior, pSGLD
from ..timing import time_interleaved
from .bdk_boston import BOSTON_CONFIGS, boston_stacked_distiller
from .bdk_mnist import time_predictive

__all__ = ["run", "MlpStepBench", "step_costs", "predictive_speedup", "distillation_step_ratio",
           "stacked_members_ratio", "format_table", "format_costs", "format_predictive", "cost_figure"]

MNIST_MLP = (784, 400, 400, 10)


def _device(device) -> torch.device:
    return torch.device(device) if device is not None else get_device()


class MlpStepBench:
    """A fixed minibatch and one initial MLP, for timing optimiser steps side by side.

    ``torch.manual_seed(0)``, then random inputs ``x`` (``batch_size`` x ``sizes[0]``) in [0, 1),
    random labels ``y`` and the initial network ``base`` (:func:`bdk.distill.mlp`); ``num_data`` =
    60,000 (MNIST's training set) scales the potential.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, device, num_data: int = 60_000):
        self.sizes, self.device, self.num_data = tuple(sizes), torch.device(device), num_data
        torch.manual_seed(0)
        self.x = torch.rand(batch_size, self.sizes[0], device=self.device)
        self.y = torch.randint(0, self.sizes[-1], (batch_size,), device=self.device)
        self.base = D.mlp(self.sizes).to(self.device)
        self.num_params = sum(p.numel() for p in self.base.parameters())

    def fresh(self) -> nn.Module:
        """A copy of ``base`` (every optimiser starts from the same weights)."""
        m = D.mlp(self.sizes).to(self.device)
        m.load_state_dict(self.base.state_dict())
        return m

    def step_fn(self, make_opt, mean_loss: bool):
        """``(step, optimizer)``: ``step()`` is zero_grad, the potential of the minibatch (divided by
        ``num_data`` when ``mean_loss``, as ``torch.optim`` optimisers expect), backward and ``step``."""
        m = self.fresh()
        opt = make_opt(m.parameters())

        def step():
            opt.zero_grad(set_to_none=True)
            u = neg_log_posterior(m, self.x, self.y, self.num_data, 1.0)
            (u / self.num_data if mean_loss else u).backward()
            opt.step()

        return step, opt

    def ivon_step_fn(self, make_opt):
        """``(step, optimizer)`` for IVON-like optimisers (``bdk.optim.IVON``, ``ivon-opt``): forward,
        backward of the mean cross-entropy inside ``sampled_params(train=True)`` (one sample), then
        ``step``; a plain optimiser (Adam) runs the same loss without the sampling block."""
        m = self.fresh()
        opt = make_opt(m.parameters())
        sampled = hasattr(opt, "sampled_params")

        def step():
            if sampled:
                with opt.sampled_params(train=True):
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(m(self.x), self.y).backward()
            else:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(m(self.x), self.y).backward()
            opt.step()

        return step, opt

    def draw_fn(self, seed: int = 0):
        """One N(0, 1) draw of as many numbers as the network has weights, on a plain generator:
        the draw an SGLD or IVON step cannot avoid."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        n, device = self.num_params, self.device
        return lambda: torch.empty(n, device=device).normal_(generator=g)


def _posteriors_sgld_step(mlp: MlpStepBench):
    """A step of ``posteriors``' SGLD on the same network and minibatch, or None without the package."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from posteriors.sgmcmc import sgld as post_sgld  # optional: a reference package
    except ImportError:
        return None
    m = mlp.fresh()
    params = {k: v.detach().clone() for k, v in m.named_parameters()}
    num_data, batch = mlp.num_data, (mlp.x, mlp.y)

    def log_post(p, batch):
        xb, yb = batch
        logits = torch.func.functional_call(m, p, (xb,))
        lp = -F.cross_entropy(logits, yb, reduction="mean") - 0.5 * sum((v**2).sum() for v in p.values()) / num_data
        return lp, logits

    transform = post_sgld.build(log_post, lr=1e-4, temperature=1.0 / num_data)
    state = transform.init(params)

    def step():
        nonlocal state
        state, _ = transform.update(state, batch, inplace=True)

    return step


def _ivon_opt_step(mlp: MlpStepBench):
    """A step of ``ivon-opt``'s IVON on the same network and minibatch, or None without the package."""
    try:
        import ivon  # optional: the reference package
    except ImportError:
        return None
    step, _ = mlp.ivon_step_fn(lambda p: ivon.IVON(p, lr=0.01, ess=mlp.num_data))
    return step


def step_costs(sizes: Sequence[int] = MNIST_MLP, batch_size: int = 100, repeats: int = 15,
               steps_per_repeat: int = 10, warmup: int = 5, device=None,
               include_references: bool = True) -> dict[str, Any]:
    """The cost of one training step of every optimiser, in one interleaved run on one network.

    Every runner starts from the same weights (:class:`MlpStepBench`) and steps on one fixed
    minibatch: SGD, SGLD, SGLD at ``temperature=0``, RMSprop and pSGLD on the potential of
    :func:`~bdk.samplers.neg_log_posterior` (the ``torch.optim`` ones on the mean); Adam and IVON
    (inside ``sampled_params(train=True)``) on the mean cross-entropy; the draw alone (one
    ``normal_`` of all weights on a plain generator); "SGD step + draw" and "Adam step + draw", the
    floors of SGLD and IVON on a CPU; and, when installed, ``posteriors``' SGLD and ``ivon-opt``'s IVON.

    Returns the median and fastest seconds per step of each and the ratios the bench reports.
    """
    device = _device(device)
    mlp = MlpStepBench(sizes, batch_size, device)
    runners: dict[str, Any] = {}
    runners["SGD"], _ = mlp.step_fn(lambda p: torch.optim.SGD(p, lr=1e-3), mean_loss=True)
    runners["SGLD"], _ = mlp.step_fn(lambda p: SGLD(p, lr=1e-8), mean_loss=False)
    runners["SGLD, T=0"], _ = mlp.step_fn(lambda p: SGLD(p, lr=1e-8, temperature=0.0), mean_loss=False)
    runners["RMSprop"], _ = mlp.step_fn(lambda p: torch.optim.RMSprop(p, lr=1e-5, alpha=0.99, eps=1e-5),
                                        mean_loss=True)
    runners["pSGLD"], _ = mlp.step_fn(lambda p: pSGLD(p, lr=1e-10, num_data=mlp.num_data), mean_loss=False)
    runners["Adam"], _ = mlp.ivon_step_fn(lambda p: torch.optim.Adam(p, lr=1e-4))
    runners["IVON"], _ = mlp.ivon_step_fn(lambda p: IVON(p, lr=0.01, ess=mlp.num_data))
    runners["draw"] = mlp.draw_fn(seed=1)
    sgd_alone, _ = mlp.step_fn(lambda p: torch.optim.SGD(p, lr=1e-3), mean_loss=True)
    adam_alone, _ = mlp.ivon_step_fn(lambda p: torch.optim.Adam(p, lr=1e-4))
    draw_sgd, draw_adam = mlp.draw_fn(seed=2), mlp.draw_fn(seed=3)
    runners["SGD + draw"] = lambda: (sgd_alone(), draw_sgd())
    runners["Adam + draw"] = lambda: (adam_alone(), draw_adam())
    if include_references:
        for name, make in (("posteriors SGLD", _posteriors_sgld_step), ("ivon-opt IVON", _ivon_opt_step)):
            step = make(mlp)
            if step is not None:
                runners[name] = step
    times = time_interleaved(runners, repeats, steps_per_repeat, device, warmup=warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "median_seconds": med,
        "min_seconds": {k: min(v) for k, v in times.items()},
        "sgld_over_sgd_plus_draw": med["SGLD"] / med["SGD + draw"],
        "ivon_over_adam_plus_draw": med["IVON"] / med["Adam + draw"],
        "sgld_over_sgd": med["SGLD"] / med["SGD"],
        "sgld_t0_over_sgd": med["SGLD, T=0"] / med["SGD"],
        "draw_over_sgd": med["draw"] / med["SGD"],
        "psgld_over_rmsprop": med["pSGLD"] / med["RMSprop"],
        "ivon_over_adam": med["IVON"] / med["Adam"],
        "ivon_without_draw_over_adam": (med["IVON"] - med["draw"]) / med["Adam"],
        "draw_ns_per_float": 1e9 * med["draw"] / mlp.num_params,
        "num_params": mlp.num_params,
        "sizes": tuple(sizes),
        "batch_size": batch_size,
        "repeats": repeats,
        "steps_per_repeat": steps_per_repeat,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if "posteriors SGLD" in med:
        out["posteriors_sgld_over_bdk_sgld"] = med["posteriors SGLD"] / med["SGLD"]
    if "ivon-opt IVON" in med:
        out["ivon_opt_over_bdk_ivon"] = med["ivon-opt IVON"] / med["IVON"]
    return out


def predictive_speedup(
    sizes: Sequence[int] = MNIST_MLP,
    num_samples: int = 100,
    num_inputs: int = 1000,
    repeats: int = 5,
    device=None,
) -> dict:
    """Time the predictive of ``num_samples`` stored MLPs on ``num_inputs`` inputs: loop vs vmap vs fast path.

    Five variants of :meth:`bdk.samplers.PosteriorSamples.forward_all` are interleaved (the order
    rotates each repeat): a Python loop over samples; ``vmap`` over all samples in one call and in the
    store's default chunks; the stacked-weight fast path in one call and in default chunks. Returns the
    median seconds, the speed-ups over the loop, the default chunk size, and the largest difference
    between the variants' outputs (they must agree).
    """
    device = _device(device)
    torch.manual_seed(0)
    model = D.mlp(sizes).to(device)
    store = PosteriorSamples(model, max_samples=num_samples)
    with torch.no_grad():
        for _ in range(num_samples):
            for p in model.parameters():
                p.normal_(0, 1 / math.sqrt(p.shape[-1]))
            store.add()
    x = torch.rand(num_inputs, sizes[0], device=device)
    # (label, method, chunk_size): None is the store's default chunking (cache-sized on a CPU)
    variants = [("loop", "loop", None), ("vmap, one call", "vmap", num_samples), ("vmap, chunked", "vmap", None),
                ("fast, one call", "fast", num_samples), ("fast, chunked", "fast", None)]
    ref = store.forward_all(x, method="loop")
    max_diff = 0.0
    for _, method, chunk in variants:  # warm-up and agreement
        max_diff = max(max_diff, (store.forward_all(x, method=method, chunk_size=chunk) - ref).abs().max().item())
    scale = ref.abs().max().item()
    del ref
    runners = {label: functools.partial(store.forward_all, x, method=method, chunk_size=chunk)
               for label, method, chunk in variants}
    times = time_interleaved(runners, repeats, 1, device, warmup=0)  # warmed up by the agreement check
    med = {label: statistics.median(v) for label, v in times.items()}
    return {
        "median_seconds": med,
        "speedup_over_loop": {label: med["loop"] / t for label, t in med.items()},
        "default_chunk_size": store._chunk_size(x, None),
        "max_abs_diff": max_diff,
        "output_scale": scale,
        "sizes": tuple(sizes),
        "num_samples": num_samples,
        "num_inputs": num_inputs,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def distillation_step_ratio(batch_size: int = 100, repeats: int = 15, steps_per_repeat: int = 10,
                            device=None) -> dict[str, Any]:
    """Time one Distilled-SGLD iteration (teacher SGLD step + student SGD step) against one SGLD step.

    Both on the MNIST MLP 784-400-400-10 (teacher and student), random inputs, interleaved repeats.
    """
    device = _device(device)
    gen = torch.Generator(device=device).manual_seed(0)
    num_data = 10 * batch_size
    x = torch.rand(num_data, 784, device=device, generator=gen)
    y = torch.randint(0, 10, (num_data,), device=device, generator=gen)

    def make_distiller():
        teacher = D.SGLDTeacher(D.mlp(MNIST_MLP).to(device), num_data=num_data, prior_precision=1.0, lr=1e-6,
                                generator=torch.Generator(device=device).manual_seed(1))
        student = D.Student.sgd(D.mlp(MNIST_MLP).to(device), lr=1e-3, prior_precision=1e-3)
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


def stacked_members_ratio(members: int = 20, repeats: int = 15, steps_per_repeat: int = 50, device=None) -> dict[str, Any]:
    """One iteration of Algorithm 1 on Boston housing (13-50-1 teacher, 13-50-2 student, the paper
    profile's settings) for ``members`` splits stacked (``bdk.distill.StackedDistiller``), for one
    split stacked, and for one split through the serial ``Distiller`` (``SGLDTeacher`` + ``Student``),
    interleaved. ``stacked_over_one`` is what ``members`` splits cost against one; ``serial_over_stacked``
    is the speed-up of the stacked path over running the splits one after another."""
    device = _device(device)
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
    device = _device(device)
    raw: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []

    def row(name, value, target, better="lower", note=""):
        met = None if (value is None or target is None) else (value <= target if better == "lower" else value >= target)
        rows.append({"measure": name, "value": value, "target": target, "better": better, "met": met, "note": note})

    raw["steps"] = s = step_costs(repeats=repeats, device=device)
    row("SGLD step / (SGD step + N(0,1) draw)", s["sgld_over_sgd_plus_draw"], 1.05,
        note="both timed in the same run: the floor of a step that draws one number per weight")
    row("IVON step / (Adam step + N(0,1) draw)", s["ivon_over_adam_plus_draw"], 1.10,
        note="the same floor for IVON")
    row("SGLD step / SGD step", s["sgld_over_sgd"], 1.10 if device.type == "cuda" else None)
    row("  SGLD step at T=0 (no noise) / SGD step", s["sgld_t0_over_sgd"], None,
        note="the SGLD code path without the Gaussian draw")
    row("  N(0,1) draw of all weights / SGD step", s["draw_over_sgd"], None,
        note=f"{s['num_params']:,} floats, {s['draw_ns_per_float']:.1f} ns each")
    row("pSGLD step / RMSprop step", s["psgld_over_rmsprop"], None)
    if "posteriors_sgld_over_bdk_sgld" in s:
        row("posteriors SGLD / bdk SGLD", s["posteriors_sgld_over_bdk_sgld"], 1.0, better="higher")
    row("IVON step / Adam step", s["ivon_over_adam"], None)
    row("  IVON step less its N(0,1) draw / Adam step", s["ivon_without_draw_over_adam"], None,
        note="the draw must stay the reference's (same torch generator, same order)")
    if "ivon_opt_over_bdk_ivon" in s:
        row("ivon-opt IVON / bdk IVON", s["ivon_opt_over_bdk_ivon"], 1.0, better="higher")

    raw["distill"] = distillation_step_ratio(repeats=max(5, repeats // 2), device=device)
    row("distillation iteration / SGLD step", raw["distill"]["distill_over_sgld"], 2.2)

    raw["stacked"] = stacked_members_ratio(repeats=max(5, repeats // 2), device=device)
    per_iter = 1e3 * raw["stacked"]["median_seconds"]["20 splits stacked"]
    row("Boston: 20 stacked splits / 1 split, per iteration", raw["stacked"]["stacked_over_one"], 3.0,
        note=f"{per_iter:.2f} ms per iteration for all 20 (13-50-1 teacher + 13-50-2 student)")
    row("Boston: 20 splits one after another / stacked", raw["stacked"]["serial_over_stacked"], None, better="higher",
        note="the serial Distiller per split against StackedDistiller")

    raw["predictive_mlp"] = predictive_speedup(sizes=MNIST_MLP, num_samples=100, num_inputs=1000, device=device)
    # the toy net takes ~0.1 s per repeat: more repeats make its median robust to a busy machine
    raw["predictive_toy"] = predictive_speedup(sizes=(2, 10, 2), num_samples=100, num_inputs=1000,
                                               repeats=max(15, repeats), device=device)
    best_mlp = max(v for k, v in raw["predictive_mlp"]["speedup_over_loop"].items() if k != "loop")
    best_toy = max(v for k, v in raw["predictive_toy"]["speedup_over_loop"].items() if k != "loop")
    row("vectorised predictive speed-up, MNIST MLP, S=100", best_mlp, 5.0 if device.type == "cuda" else 1.0,
        better="higher")
    row("vectorised predictive speed-up, toy 2-10-2, S=100", best_toy, 10.0, better="higher")

    # Student vs ensemble at test time, and how the ensemble's cost grows with S and the batch size.
    model = D.mlp(MNIST_MLP).to(device)
    gen = torch.Generator().manual_seed(0)
    vectors = 0.05 * torch.randn(100, D.mlp_num_params(MNIST_MLP), generator=gen)
    student = D.mlp(MNIST_MLP).to(device)
    x = torch.rand(10_000, 784, generator=gen).to(device)
    raw["test_time"] = time_predictive(model, vectors, student, x, num_samples=(1, 10, 100), repeats=3)
    ensemble_100 = raw["test_time"]["seconds"][-1]
    row("S=100 ensemble / student at test time (10,000 inputs)", ensemble_100 / raw["test_time"]["student_seconds"],
        50.0, better="higher")
    raw["batch_scaling"] = {}
    for n in (100, 1000, 10_000):
        t = time_predictive(model, vectors, student, x[:n], num_samples=(100,), repeats=3)
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
    # a run keeps its step costs under "steps"; runs before it, under "sgld_noise" and "ivon"
    steps = raw.get("steps", {})
    noise = steps or raw.get("sgld_noise", {})
    ivon = steps or raw.get("ivon", {})
    n = noise.get("num_params") or ivon.get("num_params")
    weights = f"{n:,} weights" if n else "every weight"
    if m == "SGLD step / (SGD step + N(0,1) draw)":
        return (f"SGLD against its floor: an SGD step followed by one standard normal draw of all {weights}, timed "
                "as one thing in the same run. On a CPU PyTorch's generator draws serially, so no SGLD step can "
                "be cheaper than this; the ratio is what SGLD adds on top (the noise's scaling and one addition).")
    if m == "IVON step / (Adam step + N(0,1) draw)":
        return ("IVON against the same floor on top of Adam: what its sampled weights, the swap into the model and "
                "back and the Hessian estimate add beyond Adam and the draw.")
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
        return f"the reference package `ivon-opt` takes {value:.2f} times as long per step as bdk's IVON."
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

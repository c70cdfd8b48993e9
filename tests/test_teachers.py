"""Every teacher of chapter 6 against the reference usage of its optimizer, with the same random draws.

A teacher is a thin wrapper: one ``step(x, y)`` must be exactly what a user of the optimizer writes by
hand (the loop the optimizer's documentation gives), so the tests below run both side by side from
the same seeds and require the same weights. The Gibbs step of the noise precision is checked
against its closed-form conditional instead.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

import bdk.distill as D
from bdk.optim import IVON
from bdk.samplers import SGLD, neg_log_posterior


def _data(task="classification", n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    if task == "classification":
        return x, (x[:, 0] * x[:, 1] > 0).long()
    return x, torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(n, generator=g)


def _same(model_a, model_b, atol=0.0):
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=atol)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_sgld_teacher_is_the_sgld_optimizer_on_the_minibatch_potential(task):
    """Ten steps of SGLDTeacher (with a step-size schedule) against SGLD + neg_log_posterior + LambdaLR."""
    x, y = _data(task)
    out = 2 if task == "classification" else 1
    schedule = lambda t: 0.5 ** (t // 4)  # noqa: E731

    torch.manual_seed(0)
    model = D.mlp((2, 8, out))
    teacher = D.SGLDTeacher(model, num_data=400, prior_precision=2.0, lr=1e-3, likelihood=task,
                            noise_precision=4.0 if task == "regression" else None, lr_lambda=schedule,
                            generator=torch.Generator().manual_seed(7))
    torch.manual_seed(0)
    ref = D.mlp((2, 8, out))
    opt = SGLD(ref.parameters(), lr=1e-3, generator=torch.Generator().manual_seed(7))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    for t in range(10):
        idx = torch.arange(4 * t, 4 * t + 4) % x.shape[0]
        teacher.step(x[idx], y[idx])
        opt.zero_grad()
        neg_log_posterior(ref, x[idx], y[idx], 400, 2.0, task, 4.0 if task == "regression" else None).backward()
        opt.step()
        sched.step()
    _same(model, ref)


def test_sgld_teacher_gibbs_step_draws_the_noise_precision_from_its_conditional():
    """With the weights held (temperature 0 and a step size of 1e-12), every Gibbs step draws the noise
    precision from Gamma(a + N/2, b + RSS/2). 2,000 draws: their mean is within 5 standard errors of
    the Gamma mean (SE = sd / sqrt(2000), sd = sqrt(shape) / rate), and so is their variance
    (SE of the sample variance about var * sqrt(2 / n + kurtosis excess / n), excess = 6 / shape)."""
    x, y = _data("regression", n=30)
    a, b, n_draws = 2.0, 0.5, 2000
    torch.manual_seed(0)
    model = D.mlp((2, 8, 1))
    teacher = D.SGLDTeacher(model, num_data=30, prior_precision=1.0, lr=1e-12, likelihood="regression",
                            noise_precision=1.0, noise_prior=(a, b), x_full=x, y_full=y, temperature=0.0,
                            generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        rss = float((model(x).reshape(-1) - y).pow(2).sum())
    draws = []
    for _ in range(n_draws):
        teacher.step(x, y)
        draws.append(teacher.noise_precision)
    with torch.no_grad():  # the weights did not move enough to change the conditional
        assert abs(float((model(x).reshape(-1) - y).pow(2).sum()) - rss) < 1e-6 * rss
    shape, rate = a + 30 / 2, b + rss / 2
    d = torch.tensor(draws, dtype=torch.float64)
    mean, var = shape / rate, shape / rate**2
    assert abs(float(d.mean()) - mean) < 5 * math.sqrt(var / n_draws)
    assert abs(float(d.var()) - var) < 5 * var * math.sqrt((2 + 6 / shape) / n_draws)


def test_dropout_teacher_is_the_optimizer_on_the_dropout_network():
    x, y = _data()

    def make():
        torch.manual_seed(0)
        model = D.mlp((2, 16, 2), dropout=0.3)
        return model, torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=1e-3)

    model, opt = make()
    teacher = D.DropoutTeacher(model, opt)
    ref, ref_opt = make()
    for t in range(8):
        torch.manual_seed(100 + t)
        teacher.step(x, y)
        torch.manual_seed(100 + t)
        ref.train()
        ref_opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        ref_opt.step()
    _same(model, ref)
    torch.manual_seed(5)
    probs = teacher.predict(x)
    torch.manual_seed(5)
    ref.train()
    with torch.no_grad():
        torch.testing.assert_close(probs, F.softmax(ref(x), -1), rtol=0, atol=0)


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("mc_samples", [1, 3])
def test_ivon_teacher_is_the_documented_ivon_loop_with_bdk_ivon(task, mc_samples):
    """IVONTeacher on bdk's IVON against the loop of bdk.optim's documentation (``zero_grad`` inside
    each of the mc_samples ``sampled_params`` blocks, one ``step`` after them), same global draws."""
    x, y = _data(task)
    out = 2 if task == "classification" else 1

    def make():
        torch.manual_seed(0)
        model = D.mlp((2, 16, out))
        return model, IVON(model.parameters(), lr=0.1, ess=40, mc_samples=mc_samples, hess_init=0.5)

    def loss_of(model):
        pred = model(x)
        if task == "classification":
            return F.cross_entropy(pred, y)
        return 0.5 * 4.0 * (pred.reshape(y.shape) - y).pow(2).mean()

    model, opt = make()
    teacher = D.IVONTeacher(model, opt, likelihood=task, noise_precision=4.0 if task == "regression" else None)
    ref, ref_opt = make()
    for t in range(5):
        torch.manual_seed(100 + t)
        teacher.step(x, y)
        torch.manual_seed(100 + t)
        for _ in range(mc_samples):
            with ref_opt.sampled_params(train=True):
                ref_opt.zero_grad()
                loss_of(ref).backward()
        ref_opt.step()
    _same(model, ref)

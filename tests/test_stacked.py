"""The stacked path of chapter 6 (bdk.distill.StackedDistiller, the batched Boston experiment) against
the serial code it replaces: step by step for the same random draws, and end to end statistically."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from bdk import distill as D
from bdk.cache import Checkpointer
from bdk.experiments import bdk_boston as E
from bdk.samplers import SGLD, neg_log_posterior


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _problem(C=3, N=40, d=4, hidden=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(C, N, d, generator=g)
    y = torch.randn(C, N, generator=g)
    torch.manual_seed(seed)
    sizes, ssizes = (d, hidden, 1), (d, hidden, 2)
    return x, y, sizes, ssizes, D.mlp_init_flat(sizes, C), D.mlp_init_flat(ssizes, C)


def _module(sizes, vector):
    model = D.mlp(sizes)
    nn.utils.vector_to_parameters(vector.clone(), model.parameters())
    return model


def _stacked(x, y, sizes, ssizes, theta0, w0, **kw):
    args = dict(task="regression", prior_precision=2.5, teacher_lr=1e-3, noise_precision=1.7, student_lr=1e-2,
                student_prior_precision=1e-3, batch_size=8, student_batch_size=5, generator=torch.Generator().manual_seed(3))
    args.update(kw)
    return D.StackedDistiller(x, y, sizes, ssizes, theta0, w0, D.stacked_noise_inputs(x, 0.05), **args)


def test_forward_with_per_member_inputs_equals_each_module():
    x, _, sizes, _, theta, _ = _problem()
    out = D.mlp_forward_flat(theta, x, sizes)
    for c in range(x.shape[0]):
        torch.testing.assert_close(out[c], _module(sizes, theta[c])(x[c]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="per-network inputs"):
        D.mlp_forward_flat(theta, x[:2], sizes)


@pytest.mark.parametrize("sizes", [(3, 5, 2), (3, 5, 4, 2)])
def test_hand_written_gradients_equal_autograd(sizes):
    torch.manual_seed(0)
    theta = D.mlp_init_flat(sizes, 4)
    x = torch.randn(4, 7, sizes[0])
    target = torch.randn(4, 7, sizes[-1])

    def loss_and_dout(out):
        return (out - target).pow(3).sum((1, 2)), 3 * (out - target).pow(2)

    loss, grad = D.mlp_value_and_grad_flat(theta, x, sizes, loss_and_dout)
    t = theta.clone().requires_grad_(True)
    expected = (D.mlp_forward_flat(t, x, sizes) - target).pow(3).sum((1, 2))
    (g,) = torch.autograd.grad(expected.sum(), t)
    torch.testing.assert_close(loss, expected.detach())
    torch.testing.assert_close(grad, g, rtol=1e-5, atol=1e-5)


def test_classification_steps_equal_the_serial_teacher_and_student():
    x, _, _, _, _, _ = _problem()
    y = torch.randint(3, (3, x.shape[1]), generator=torch.Generator().manual_seed(1))
    sizes = (x.shape[2], 6, 3)
    torch.manual_seed(2)
    theta0, w0 = D.mlp_init_flat(sizes, 3), D.mlp_init_flat(sizes, 3)
    run = D.StackedDistiller(x, y, sizes, sizes, theta0, w0, D.stacked_noise_inputs(x, 0.0), prior_precision=1.0,
                             teacher_lr=1e-3, student_lr=1e-2, student_prior_precision=1e-3, batch_size=8)
    idx = torch.arange(8).expand(3, 8)
    noise = torch.randn(theta0.shape, generator=torch.Generator().manual_seed(9))
    run.teacher_step(idx, 1e-3, noise=noise)
    xs = torch.randn(3, 5, x.shape[2], generator=torch.Generator().manual_seed(4))
    run.student_step(xs, 1e-2)
    for c in range(3):
        model = _module(sizes, theta0[c])
        neg_log_posterior(model, x[c, :8], y[c, :8], x.shape[1], 1.0).backward()
        SGLD(model.parameters(), lr=1e-3, temperature=0.0).step()
        theta = nn.utils.parameters_to_vector(model.parameters()).detach() + math.sqrt(1e-3) * noise[c]
        torch.testing.assert_close(run.theta[c], theta, rtol=1e-5, atol=1e-6)
        student = D.Student.sgd(_module(sizes, w0[c]), 1e-2, 1e-3)
        with torch.no_grad():
            probs = torch.softmax(_module(sizes, theta)(xs[c]), -1)
        D.classification_distillation_loss(student.model(xs[c]), probs).backward()
        student.optimizer.step()
        torch.testing.assert_close(run.w[c], nn.utils.parameters_to_vector(student.model.parameters()).detach(),
                                   rtol=1e-5, atol=1e-6)


def test_teacher_step_equals_sgld_on_each_member_for_the_same_draws():
    """One stacked SGLD step = for each member, neg_log_posterior + backward + bdk.samplers.SGLD at
    temperature 0 (the drift) plus sqrt(lr) times the same standard normal draw."""
    x, y, sizes, ssizes, theta0, w0 = _problem()
    run = _stacked(x, y, sizes, ssizes, theta0, w0)
    idx = torch.stack([torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(c))[:8] for c in range(3)])
    noise = torch.randn(theta0.shape, generator=torch.Generator().manual_seed(9))
    lr = 1e-3
    U = run.teacher_step(idx, lr, noise=noise)
    for c in range(3):
        model = _module(sizes, theta0[c])
        opt = SGLD(model.parameters(), lr=lr, temperature=0.0)
        potential = neg_log_posterior(model, x[c, idx[c]], y[c, idx[c]], x.shape[1], 2.5, "regression", 1.7)
        potential.backward()
        opt.step()
        expected = nn.utils.parameters_to_vector(model.parameters()).detach() + math.sqrt(lr) * noise[c]
        torch.testing.assert_close(run.theta[c], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(U[c], potential.detach(), rtol=1e-5, atol=1e-4)


def test_student_step_equals_the_serial_student_for_the_same_inputs():
    x, y, sizes, ssizes, theta0, w0 = _problem()
    run = _stacked(x, y, sizes, ssizes, theta0, w0)
    xs = torch.randn(3, 5, x.shape[2], generator=torch.Generator().manual_seed(4))
    loss = run.student_step(xs, 1e-2)
    for c in range(3):
        teacher = _module(sizes, theta0[c])
        student = D.Student.sgd(_module(ssizes, w0[c]), 1e-2, 1e-3)
        with torch.no_grad():
            mean = teacher(xs[c]).squeeze(-1)
        student.optimizer.zero_grad()
        out = student.model(xs[c])
        s_loss = D.regression_distillation_loss(out[:, 0], out[:, 1], mean, 1 / 1.7)
        s_loss.backward()
        student.optimizer.step()
        torch.testing.assert_close(loss[c], s_loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(run.w[c], nn.utils.parameters_to_vector(student.model.parameters()).detach(),
                                   rtol=1e-5, atol=1e-6)


def test_batched_gamma_draws_match_the_gamma_moments():
    """Mean and variance of 200,000 draws of Gamma(a, b_c) for three rates; tolerance 4 standard
    errors (the s.e. of a sample mean is sd / sqrt(n); of a sample variance about var * sqrt(2/n)
    for a near-Gaussian law, Gamma(233) has skewness 0.13)."""
    n, a = 200_000, 233.5
    rate = torch.tensor([10.0, 80.0, 400.0], dtype=torch.float64).repeat(n)
    draws = D._gamma_batched(a, rate, torch.Generator().manual_seed(0)).view(n, 3)
    mean, var = a / rate[:3], a / rate[:3] ** 2
    assert torch.all((draws.mean(0) - mean).abs() < 4 * var.sqrt() / math.sqrt(n))
    assert torch.all((draws.var(0) - var).abs() < 4 * var * math.sqrt(2 / n))


def test_stacked_run_resumes_bit_for_bit(tmp_path):
    x, y, sizes, ssizes, theta0, w0 = _problem()
    kw = dict(noise_prior=(6.0, 6.0), noise_every=3, burn_in=20, thin=5, ensemble_inputs={"t": x[:, :10]},
              ensemble_targets={"t": y[:, :10]})
    straight = _stacked(x, y, sizes, ssizes, theta0, w0, **kw).run(120)
    ckpt = Checkpointer(tmp_path / "s.ckpt", every=50, verbose=False)
    first = _stacked(x, y, sizes, ssizes, theta0, w0, **kw).run(70, checkpointer=ckpt)  # saved at 50
    assert first.iteration == 70
    resumed = _stacked(x, y, sizes, ssizes, theta0, w0, **kw).run(120, checkpointer=ckpt)
    assert torch.equal(resumed.theta, straight.theta) and torch.equal(resumed.w, straight.w)
    assert torch.equal(resumed.tau, straight.tau)
    assert torch.equal(resumed.ensemble("t")["log_lik"], straight.ensemble("t")["log_lik"])


def test_stacked_run_names_the_member_whose_loss_is_not_finite():
    x, y, sizes, ssizes, theta0, w0 = _problem()
    theta0 = theta0.clone()
    theta0[1, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="member 1"):
        _stacked(x, y, sizes, ssizes, theta0, w0).run(2)


def test_boston_sgd_of_one_split_is_the_serial_sgd():
    """With one split the stacked SGD baseline draws the same initial weights and minibatches as the
    serial one, so the two agree to float rounding."""
    cfg = dataclasses.replace(E.BOSTON_CONFIGS["quick"], num_splits=1, iterations=900, burn_in=800, sgd_iterations=300)
    stacked = E.boston(cfg)["splits"][0]
    serial = E.boston(dataclasses.replace(cfg, batched=False))["splits"][0]
    assert stacked["SGD"] == pytest.approx(serial["SGD"], abs=1e-4)


@pytest.mark.slow
def test_boston_stacked_agrees_with_serial_statistically():
    """Eight splits, stacked and serial (independent random streams). Per split, the difference of the
    two runs' test log-likelihoods has mean zero if both run the same algorithm; we require the mean
    difference within 4 of its standard errors (estimated from the eight differences; a t statistic
    with 7 degrees of freedom exceeds 4 with probability 0.005). A wrong likelihood scaling, prior or
    step size in either path moves every split the same way and fails it."""
    cfg = dataclasses.replace(E.BOSTON_CONFIGS["quick"], num_splits=8, iterations=2000, burn_in=800)
    stacked = E.boston(cfg)["splits"]
    serial = E.boston(dataclasses.replace(cfg, batched=False))["splits"]
    for method in ("SGLD", "SGLD distilled"):
        diff = torch.tensor([a[method] - b[method] for a, b in zip(stacked, serial)], dtype=torch.float64)
        se = diff.std() / math.sqrt(len(diff))
        assert abs(float(diff.mean())) < 4 * float(se), (method, diff)
        # and the check has power: the spread of the differences is well below the gap between methods
        assert float(se) < 0.1

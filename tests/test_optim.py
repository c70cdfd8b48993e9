"""Tests of bdk.optim.IVON: properties, the reference implementation ivon-opt, a conjugate model."""

from __future__ import annotations

import copy
import inspect
import io
import math

import pytest
import torch
from torch.nn import functional as F

from bdk.optim import IVON

# ---------------------------------------------------------------------------------------------
# helpers


pytestmark = pytest.mark.usefixtures("one_thread")



def _mlp(seed: int = 1, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).to(dtype)


def _data(dtype=torch.float32, n: int = 64):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _train(model, opt, x, y, steps: int, seed: int = 123, samples: int | None = None):
    torch.manual_seed(seed)
    samples = opt.mc_samples if samples is None else samples
    for _ in range(steps):
        for _ in range(samples):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
        opt.step()


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _hess_bdk(opt, model) -> torch.Tensor:
    return torch.cat([opt.state[p]["hess"].flatten() for p in model.parameters()])


def _hess_ref(opt) -> torch.Tensor:
    return torch.cat([g["hess"] for g in opt.param_groups])


# ---------------------------------------------------------------------------------------------
# interface and argument checks


def test_defaults_and_signature_match_the_reference():
    ivon = pytest.importorskip("ivon")
    ours = inspect.signature(IVON.__init__).parameters
    ref = inspect.signature(ivon.IVON.__init__).parameters
    assert list(ours) == list(ref)
    for name, param in ref.items():
        assert ours[name].default == param.default, name


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=-0.1),
        dict(lr=float("nan")),
        dict(ess=0.0),
        dict(ess=-5.0),
        dict(ess=float("inf")),
        dict(hess_init=0.0),
        dict(hess_init=-1.0),
        dict(beta1=1.5),
        dict(beta1=-0.1),
        dict(beta2=1.01),
        dict(weight_decay=-1e-4),
        dict(mc_samples=0),
        dict(mc_samples=1.5),
        dict(hess_approx="hutchinson"),
        dict(clip_radius=0.0),
        dict(lr="0.1"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    args = dict(lr=0.1, ess=100.0)
    args.update(kwargs)
    with pytest.raises(ValueError):
        IVON([torch.zeros(3, requires_grad=True)], **args)


def test_bad_group_value_and_integer_parameter_raise_value_error():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="ess"):
        IVON([{"params": [a]}, {"params": [b], "ess": -1.0}], lr=0.1, ess=10.0)
    with pytest.raises(ValueError, match="floating-point"):
        IVON([torch.zeros(3, dtype=torch.int64)], lr=0.1, ess=10.0)


def test_misuse_raises_runtime_error():
    model = _mlp()
    x, y = _data()
    opt = IVON(model.parameters(), lr=0.1, ess=64)
    with pytest.raises(RuntimeError, match="sampled_params"):
        opt.step()  # no gradient sample yet
    with pytest.raises(RuntimeError, match="nested"):
        with opt.sampled_params(), opt.sampled_params():
            pass
    with pytest.raises(RuntimeError, match="backward"):
        with opt.sampled_params(train=True):
            model(x)  # forgot backward
    with opt.sampled_params(train=True):
        F.cross_entropy(model(x), y).backward()
        with pytest.raises(RuntimeError, match="inside"):
            opt.step()


# ---------------------------------------------------------------------------------------------
# sampling


def test_weights_restored_after_an_exception_inside_sampled_params():
    model = _mlp()
    x, y = _data()
    opt = IVON(model.parameters(), lr=0.1, ess=64, hess_init=0.1)
    _train(model, opt, x, y, steps=3)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ZeroDivisionError):
        with opt.sampled_params(train=True):
            inside = [p.detach().clone() for p in model.parameters()]
            F.cross_entropy(model(x), y).backward()
            1 / 0
    for p, b, i in zip(model.parameters(), before, inside):
        assert torch.equal(p, b)  # bit for bit the mean
        assert not torch.equal(i, b)  # and it was perturbed inside
    with pytest.raises(RuntimeError, match="sampled_params"):
        opt.step()  # the failed block collected nothing
    with opt.sampled_params():  # and the optimizer still works
        pass


def test_sampled_noise_has_the_posterior_scale():
    n = 40_000
    p = torch.zeros(n, requires_grad=True)
    ess, wd, h0 = 500.0, 0.3, 2.0
    opt = IVON([p], lr=0.1, ess=ess, hess_init=h0, weight_decay=wd)
    torch.manual_seed(0)
    with opt.sampled_params():
        z = p.detach() * math.sqrt(ess * (h0 + wd))  # should be N(0, 1) draws
    assert torch.equal(p.detach(), torch.zeros(n))
    # SE of the mean of n standard normals: 1/sqrt(n) = 0.005, 4 SE = 0.02;
    # SE of the sample variance: sqrt(2/n) = 0.0071, 4 SE = 0.028.
    assert abs(z.mean().item()) < 4 / math.sqrt(n)
    assert abs(z.var().item() - 1.0) < 4 * math.sqrt(2 / n)
    var = opt.posterior_variance()[0]
    torch.testing.assert_close(var, torch.full((n,), 1 / (ess * (h0 + wd))))


def test_zero_learning_rate_and_zero_gradient_leave_the_mean_unchanged():
    model = _mlp()
    x, y = _data()
    start = _flat(model)
    opt = IVON(model.parameters(), lr=0.0, ess=64)
    _train(model, opt, x, y, steps=5)
    assert torch.equal(_flat(model), start)

    p = torch.randn(10).requires_grad_()
    start = p.detach().clone()
    opt = IVON([p], lr=0.5, ess=10, weight_decay=0.0)
    for _ in range(5):
        with opt.sampled_params(train=True):
            p.grad = torch.zeros_like(p)
        opt.step()
    assert torch.equal(p.detach(), start)


def test_a_positive_gradient_moves_the_mean_down():
    p = torch.zeros(4, requires_grad=True)
    opt = IVON([p], lr=0.1, ess=1e6, weight_decay=0.0)
    with opt.sampled_params(train=True):
        (3.0 * p).sum().backward()  # gradient +3 whatever the sample
    opt.step()
    # first step: momentum (1 - b1) 3, debiased to 3; h stays >0; m = -lr h0 * 3 / h
    assert (p < 0).all()


def test_mc_samples_average_the_gradients():
    torch.manual_seed(0)
    p = torch.randn(6, requires_grad=True)
    a = torch.randn(6)
    opt = IVON([p], lr=0.1, ess=50.0, mc_samples=4, beta1=0.5)
    grads = []

    def closure():
        with opt.sampled_params(train=True):
            opt.zero_grad()
            loss = (a * p**2).sum()  # gradient 2 a theta, different for every sample
            loss.backward()
            grads.append(p.grad.clone())
        return loss

    opt.step(closure)
    assert len(grads) == 4
    expected = 0.5 * torch.stack(grads).mean(0)  # (1 - b1) times the average gradient
    torch.testing.assert_close(opt.state[p]["momentum"], expected)


# ---------------------------------------------------------------------------------------------
# groups, devices, dtypes, determinism, state_dict


def test_parameter_groups_use_their_own_hyperparameters():
    model = _mlp()
    x, y = _data()
    opt = IVON(
        [{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters(), "hess_init": 3.0}],
        lr=0.1,
        ess=64,
    )
    first = [p.detach().clone() for p in model[0].parameters()]
    last = [p.detach().clone() for p in model[2].parameters()]
    _train(model, opt, x, y, steps=2)
    assert all(torch.equal(p, q) for p, q in zip(model[0].parameters(), first))
    assert not any(torch.equal(p, q) for p, q in zip(model[2].parameters(), last))
    assert opt.state[model[0].weight]["hess"].mean().item() != pytest.approx(3.0, abs=0.5)
    assert opt.state[model[2].weight]["hess"].mean().item() == pytest.approx(3.0, rel=0.01)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_follows_the_parameters_dtype(dtype):
    model = _mlp(dtype=dtype)
    x, y = _data(dtype)
    opt = IVON(model.parameters(), lr=0.1, ess=64)
    _train(model, opt, x, y, steps=2)
    for p in model.parameters():
        assert p.dtype == dtype
        for key in ("momentum", "hess"):
            assert opt.state[p][key].dtype == dtype and opt.state[p][key].device == p.device
    model.double()  # change the dtype after the optimizer was built: the state follows
    _train(model, opt, x.double(), y, steps=1)
    for p in model.parameters():
        assert opt.state[p]["hess"].dtype == torch.float64


def test_mixed_dtypes_in_one_group():
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = IVON([a, b], lr=0.1, ess=10.0)
    with opt.sampled_params(train=True):
        (a.sum() + b.sum()).backward()
    opt.step()
    assert opt.state[a]["hess"].dtype == torch.float32 and opt.state[b]["hess"].dtype == torch.float64
    assert (a < 0).all() and (b < 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_and_follows_the_model():
    model = _mlp()
    x, y = _data()
    opt = IVON(model.parameters(), lr=0.1, ess=64)
    _train(model, opt, x, y, steps=1)
    model.cuda()
    _train(model, opt, x.cuda(), y.cuda(), steps=2)
    for p in model.parameters():
        assert opt.state[p]["hess"].is_cuda and opt.state[p]["momentum"].is_cuda


def test_deterministic_under_a_seed():
    x, y = _data()
    runs = []
    for seed in (7, 7, 8):
        model = _mlp()
        opt = IVON(model.parameters(), lr=0.1, ess=64, mc_samples=2)
        _train(model, opt, x, y, steps=5, seed=seed)
        runs.append(_flat(model))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_state_dict_round_trip():
    x, y = _data()
    model = _mlp()
    opt = IVON([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.05}], lr=0.1, ess=64)
    _train(model, opt, x, y, steps=4)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    model2 = copy.deepcopy(model)
    opt2 = IVON([{"params": model2[0].parameters()}, {"params": model2[2].parameters()}], lr=0.3, ess=1.0)
    opt2.load_state_dict(torch.load(buffer, weights_only=True))
    assert opt2.param_groups[1]["lr"] == 0.05 and opt2.param_groups[0]["ess"] == 64
    _train(model, opt, x, y, steps=3, seed=99)
    _train(model2, opt2, x, y, steps=3, seed=99)
    assert torch.equal(_flat(model), _flat(model2))
    assert torch.equal(_hess_bdk(opt, model), _hess_bdk(opt2, model2))
    assert opt2.current_step == 7


def test_loaded_state_is_not_shared_with_its_source():
    x, y = _data()
    model = _mlp()
    opt = IVON(model.parameters(), lr=0.1, ess=64)
    _train(model, opt, x, y, steps=2)
    model2 = copy.deepcopy(model)
    opt2 = IVON(model2.parameters(), lr=0.1, ess=64)
    opt2.load_state_dict(opt.state_dict())
    hess_before = _hess_bdk(opt, model).clone()
    _train(model2, opt2, x, y, steps=2)
    assert torch.equal(_hess_bdk(opt, model), hess_before)


# ---------------------------------------------------------------------------------------------
# agreement with the reference implementation ivon-opt


_REFERENCE_CONFIGS = [
    dict(),
    dict(mc_samples=2, clip_radius=0.05),
    dict(hess_approx="gradsq", beta1=0.5, beta2=0.99),
    dict(weight_decay=0.0, rescale_lr=False, debias=False, hess_init=2.0, lr=0.02),
    dict(mc_samples=3, beta1=0.5, beta2=0.99, weight_decay=1e-3),
]


@pytest.mark.parametrize("config", _REFERENCE_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_identical_to_ivon_opt_with_the_same_random_draws(config, dtype):
    ivon = pytest.importorskip("ivon")
    x, y = _data(dtype)
    results = []
    for cls in (IVON, ivon.IVON):
        model = _mlp(dtype=dtype)
        groups = [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.05}]
        kwargs = dict(lr=0.1, ess=64, hess_init=0.5)
        kwargs.update(config)
        opt = cls(groups, **kwargs)
        _train(model, opt, x, y, steps=30)
        hess = _hess_bdk(opt, model) if cls is IVON else _hess_ref(opt)
        results.append((_flat(model), hess))
    (m1, h1), (m2, h2) = results
    # The two differ only in the order of floating-point operations: a few ulp per op, a few
    # hundred ops over 30 steps. float64: eps 2.2e-16 -> 1e-12 leaves margin; float32: eps 1.2e-7
    # -> 1e-5 relative (observed differences ~3e-7).
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m1, m2, **tol)
    torch.testing.assert_close(h1, h2, **tol)
    assert not torch.equal(m1, _flat(_mlp(dtype=dtype)))  # it moved


# Bayesian linear regression with a Gaussian likelihood (noise variance 1): with N examples and
# the average loss 0.5 mean_i (y_i - x_i theta)^2, the per-example Hessian is H = X'X / N; with
# ess = N and weight_decay delta the posterior precision is P = N (H + delta I) and the posterior
# mean mu = P^{-1} X'y. The mean-field Gaussian VI optimum has mean mu and precisions diag(P).
# IVON is elementwise, so R independent replicas run as the rows of one (R, d) parameter.


def _blr_problem(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    n, d = 200, 3
    mix = torch.tensor([[1.0, 0.6, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]], dtype=dtype)
    x = torch.randn(n, d, generator=g, dtype=dtype) @ mix * torch.tensor([1.0, 2.0, 0.5], dtype=dtype)
    y = x @ torch.tensor([1.0, -0.5, 2.0], dtype=dtype) + torch.randn(n, generator=g, dtype=dtype)
    return x, y


def _blr_run(cls, x, y, replicas, steps, seed, **kwargs):
    n, d = x.shape
    hess = x.T @ x / n
    xy = x.T @ y / n
    theta = torch.zeros(replicas, d, dtype=x.dtype, requires_grad=True)
    opt = cls([theta], ess=n, **kwargs)
    torch.manual_seed(seed)
    for _ in range(steps):
        for _ in range(opt.mc_samples):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                # sum over replicas of each replica's average loss (sufficient statistics; constants dropped)
                loss = 0.5 * ((theta @ hess) * theta).sum() - (theta @ xy).sum()
                loss.backward()
        opt.step()
    h = opt.state[theta]["hess"] if cls is IVON else opt.param_groups[0]["hess"].view(replicas, d)
    return theta.detach().clone(), h.clone()


@pytest.mark.slow
def test_conjugate_linear_regression_reaches_the_mean_field_optimum():
    x, y = _blr_problem()
    n, d = x.shape
    delta, beta2, replicas = 0.01, 0.995, 1000
    hess = x.T @ x / n
    precision = n * (hess + delta * torch.eye(d, dtype=x.dtype))
    mu = torch.linalg.solve(precision, x.T @ y)
    m, h = _blr_run(
        IVON, x, y, replicas, steps=3000, seed=0, lr=0.05, hess_init=0.5, weight_decay=delta, beta2=beta2
    )
    # Means: the replicas are independent draws of the stationary law; SE of their average is the
    # replicas' SD / sqrt(R) (here ~1e-4); 4 SE.
    se_m = m.std(0) / math.sqrt(replicas)
    assert ((m.mean(0) - mu).abs() < 4 * se_m).all(), (m.mean(0), mu, se_m)
    # Hessians: E[hhat | h] = diag(H) exactly for 'price' on a quadratic (Stein's lemma), so the
    # stationary mean of h is diag(H) plus the Riemannian term's bias
    # 0.5 (1 - beta2) E[(h - hhat)^2] / (h + delta) ~= 0.5 (1 - beta2) Var(hhat) / (H_jj + delta),
    # where, with s_j^2 = 1 / P_jj and g = -delta mu + H eps at the optimum,
    # Var(hhat_j) = (delta mu_j)^2 / s_j^2 + 2 H_jj^2 + sum_{k != j} H_jk^2 s_k^2 / s_j^2.
    s2 = 1.0 / precision.diag()
    var_f = (delta * mu) ** 2 / s2 + hess.diag() ** 2 + ((hess**2) * s2[None, :] / s2[:, None]).sum(1)
    bias = 0.5 * (1 - beta2) * var_f / (hess.diag() + delta)
    se_h = h.std(0) / math.sqrt(replicas)
    assert ((h.mean(0) - hess.diag() - bias).abs() < 4 * se_h).all(), (h.mean(0), hess.diag(), bias, se_h)
    # The bias is small against the precision itself, so ess (h + delta) is the diagonal of P:
    torch.testing.assert_close(n * (h.mean(0) + delta), precision.diag(), rtol=0.01, atol=0.0)
    # The spread of h is the EMA's: SD = sqrt(Var(hhat) (1 - beta2) / (1 + beta2)); the SD of a
    # sample SD of R draws is ~ SD / sqrt(2R) = 2.2%, so 4 SE = 9%.
    sd_pred = (var_f * (1 - beta2) / (1 + beta2)).sqrt()
    torch.testing.assert_close(h.std(0), sd_pred, rtol=4 / math.sqrt(2 * replicas), atol=0.0)


def test_statistically_indistinguishable_from_ivon_opt_with_different_seeds():
    ivon = pytest.importorskip("ivon")
    x, y = _blr_problem()
    replicas = 2000
    kwargs = dict(lr=0.05, hess_init=0.5, weight_decay=0.01, beta2=0.99, mc_samples=2, steps=150)
    m1, h1 = _blr_run(IVON, x, y, replicas, seed=1, **kwargs)
    m2, h2 = _blr_run(ivon.IVON, x, y, replicas, seed=2, **kwargs)
    for a, b in ((m1, m2), (h1, h2)):
        # two-sample z statistic of the means (SE from the replicas), 4 SE
        se = (a.var(0) / replicas + b.var(0) / replicas).sqrt()
        assert ((a.mean(0) - b.mean(0)).abs() < 4 * se).all()
        # log ratio of the SDs: SE sqrt(1/(2R) + 1/(2R)) = 0.022, 4 SE
        assert ((a.std(0) / b.std(0)).log().abs() < 4 * math.sqrt(1 / replicas)).all()
    # and with the same seed the replicas agree draw by draw
    m3, h3 = _blr_run(ivon.IVON, x, y, replicas, seed=1, **kwargs)
    torch.testing.assert_close(m1, m3, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h1, h3, rtol=1e-10, atol=1e-12)


def test_numpy_scalars_are_accepted():
    np = pytest.importorskip("numpy")
    p = torch.zeros(3, requires_grad=True)
    opt = IVON([p], lr=np.float32(0.1), ess=np.int64(100), mc_samples=np.int64(2))
    assert opt.mc_samples == 2


def test_add_param_group_between_a_sample_and_its_step_raises():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = IVON([a], lr=0.1, ess=10.0)
    with opt.sampled_params(train=True):
        a.sum().backward()
    with pytest.raises(RuntimeError, match="between steps"):
        opt.add_param_group({"params": [b]})
    opt.step()
    opt.add_param_group({"params": [b], "lr": 0.0})
    with opt.sampled_params(train=True):
        (a.sum() + b.sum()).backward()
    opt.step()
    assert torch.equal(b.detach(), torch.zeros(2)) and opt.state[b]["step"] == 1


# ---------------------------------------------------------------------------------------------
# the chapter's experiment helpers (bdk.experiments.ivon)


def test_logistic_map_is_a_stationary_point_and_warm_start_agrees():
    from bdk.experiments.ivon import logistic_map

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(80, 4, generator=g, dtype=torch.float64), torch.ones(80, 1, dtype=torch.float64)], 1)
    y = (torch.rand(80, generator=g, dtype=torch.float64) < torch.sigmoid(x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 0.3], dtype=torch.float64))).double()
    lam = 2.0
    theta, hess = logistic_map(x, y, lam)
    grad = x.T @ (torch.sigmoid(x @ theta) - y) + lam * theta
    assert grad.abs().max() < 1e-9  # Newton's method converges quadratically: to rounding
    assert torch.linalg.eigvalsh(hess).min() >= lam - 1e-9
    keep = torch.arange(80) != 7
    cold, _ = logistic_map(x[keep], y[keep], lam)
    warm, _ = logistic_map(x[keep], y[keep], lam, theta0=theta)
    torch.testing.assert_close(cold, warm, rtol=0, atol=1e-9)


def test_deepcopy_keeps_the_settings_and_the_state():
    x, y = _data()
    model = _mlp()
    opt = IVON(model.parameters(), lr=0.1, ess=64, mc_samples=2)
    _train(model, opt, x, y, steps=2)
    model2 = copy.deepcopy(model)
    opt2 = IVON(model2.parameters(), lr=0.1, ess=64, mc_samples=2)
    opt2.load_state_dict(copy.deepcopy(opt).state_dict())
    assert copy.deepcopy(opt).mc_samples == 2
    _train(model, opt, x, y, steps=2, seed=5)
    _train(model2, opt2, x, y, steps=2, seed=5)
    assert torch.equal(_flat(model), _flat(model2))


# --------------------------------------------------------------------------------------------------
# the kernel ivon_step, and the fused update tested equal to it
# --------------------------------------------------------------------------------------------------


def test_ivon_step_is_the_equation_by_hand():
    from bdk.optim import ivon_step

    d = torch.float64
    m, momentum, h = torch.tensor([1.0], dtype=d), torch.tensor([0.5], dtype=d), torch.tensor([2.0], dtype=d)
    # beta1 = 0.5, beta2 = 0.5, delta = 1, t = 1, alpha = 0.1, g_hat = 1.5, h_hat = 4
    ivon_step(m, momentum, h, torch.tensor([1.5], dtype=d), torch.tensor([4.0], dtype=d), lr=0.1, beta1=0.5,
              beta2=0.5, weight_decay=1.0, step=1)
    # momentum = 0.5 * 0.5 + 0.5 * 1.5 = 1; h = 0.5 * 2 + 0.5 * 4 + 0.5 * 0.25 * (2 - 4)^2 / 3 = 3 + 1/6
    assert momentum.item() == 1.0
    assert h.item() == pytest.approx(3 + 1 / 6, abs=1e-15)
    # m = 1 - 0.1 * (1 / (1 - 0.5) + 1 * 1) / (h + 1)
    assert m.item() == pytest.approx(1 - 0.1 * 3 / (4 + 1 / 6), abs=1e-15)
    m2 = torch.tensor([1.0], dtype=d)
    ivon_step(m2, torch.tensor([0.5], dtype=d), torch.tensor([2.0], dtype=d), torch.tensor([1.5], dtype=d),
              torch.tensor([4.0], dtype=d), lr=0.1, beta1=0.5, beta2=0.5, weight_decay=1.0, step=1, clip_radius=0.01)
    assert m2.item() == pytest.approx(1 - 0.1 * 0.01, abs=1e-15)  # the step is clipped to +-r


@pytest.mark.parametrize("hess_approx", ["price", "gradsq"])
@pytest.mark.parametrize("mc_samples,clip_radius", [(1, math.inf), (3, math.inf), (2, 1e-3)])
def test_the_fused_update_is_the_kernel(hess_approx, mc_samples, clip_radius):
    """IVON's fused ``_foreach`` update (the one that runs) against the same optimizer updating every
    tensor with :func:`bdk.optim.ivon_step`, from the same draws: equal to float64 rounding."""

    def run(by_kernel):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
        opt = IVON(model.parameters(), lr=0.05, ess=200, hess_init=0.5, beta2=0.99, weight_decay=1e-2,
                   mc_samples=mc_samples, hess_approx=hess_approx, clip_radius=clip_radius)
        if by_kernel:
            opt._update_group = opt._update_group_by_kernel
        gen = torch.Generator().manual_seed(1)
        for _ in range(6):
            x, y = torch.randn(16, 4, dtype=torch.float64, generator=gen), torch.randint(0, 3, (16,), generator=gen)
            for _ in range(mc_samples):
                with opt.sampled_params(train=True):
                    opt.zero_grad()
                    F.cross_entropy(model(x), y).backward()
            opt.step()
        return [t.detach().clone() for p in model.parameters() for t in (p, opt.state[p]["hess"], opt.state[p]["momentum"])]

    fused, kernel = run(False), run(True)
    for a, b in zip(fused, kernel):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)

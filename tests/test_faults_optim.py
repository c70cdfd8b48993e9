"""Faults the optimizers must refuse loudly (issue 14, "Nothing silent"): IVON (bdk.optim) and VON (bdk.blr).

Every refusal is checked twice: the error says what is wrong, and the weights and the optimizer
state are bit for bit what they were before (compared with a saved copy); where a refusal is
followed by more training, the result is compared with a fresh optimizer loaded from that copy.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.nn import functional as F

from bdk import blr
from bdk.optim import IVON

NAN, INF = float("nan"), float("inf")


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# IVON helpers


def _mlp(seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def _data(n: int = 64):
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


IVON_ARGS = dict(lr=0.1, ess=64, hess_init=0.5, weight_decay=1e-3)


def _ivon_iteration(model, opt, x, y, seed: int, scale: float = 1.0) -> None:
    torch.manual_seed(seed)
    with opt.sampled_params(train=True):
        opt.zero_grad()
        (F.cross_entropy(model(x), y) * scale).backward()
    opt.step()


def _trained_ivon(steps: int = 3, two_groups: bool = False):
    model, (x, y) = _mlp(), _data()
    if two_groups:
        params = [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.05}]
    else:
        params = model.parameters()
    opt = IVON(params, **IVON_ARGS)
    for t in range(steps):
        _ivon_iteration(model, opt, x, y, seed=100 + t)
    return model, opt, x, y


def _snapshot(model, opt) -> tuple[dict, dict]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _assert_state_equal(sd_a: dict, sd_b: dict) -> None:
    assert sd_a["state"].keys() == sd_b["state"].keys()
    for i, st in sd_a["state"].items():
        assert st.keys() == sd_b["state"][i].keys()
        for k, v in st.items():
            w = sd_b["state"][i][k]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, (i, k)


def _assert_unchanged(model, opt, snap) -> None:
    weights, state = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k  # bit for bit
    _assert_state_equal(opt.state_dict(), state)


def _fresh_ivon(snap, two_groups: bool = False):
    """A new model and IVON loaded from a snapshot: what the refused optimizer must still equal."""
    model = _mlp(seed=99)  # other initial weights, overwritten by the snapshot
    model.load_state_dict(snap[0])
    if two_groups:
        params = [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.05}]
    else:
        params = model.parameters()
    opt = IVON(params, **IVON_ARGS)
    opt.load_state_dict(copy.deepcopy(snap[1]))
    return model, opt


def _assert_same_run(model_a, opt_a, model_b, opt_b) -> None:
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.isfinite(pa).all()
        assert torch.equal(pa, pb)
    _assert_state_equal(opt_a.state_dict(), opt_b.state_dict())


# ---------------------------------------------------------------------------------------------
# IVON: non-finite gradients (cases 1 and 2)


@pytest.mark.parametrize("hess_approx", ["price", "gradsq"])
@pytest.mark.parametrize("samples", [1, 2])  # with 2, the first sample is fine and the second is bad
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_ivon_refuses_a_non_finite_gradient_and_changes_nothing(bad, samples, hess_approx):
    model, (x, y) = _mlp(), _data()
    opt = IVON(model.parameters(), **IVON_ARGS, hess_approx=hess_approx)
    for t in range(3):
        _ivon_iteration(model, opt, x, y, seed=100 + t)
    snap = _snapshot(model, opt)
    torch.manual_seed(7)
    for s in range(samples):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if s == samples - 1:
                model[2].bias.grad[1] = bad  # one entry of one gradient
    with pytest.raises(FloatingPointError, match=r"IVON step 4: a gradient is NaN or infinite \(parameter of shape \(3,\)"):
        opt.step()
    _assert_unchanged(model, opt, snap)


@pytest.mark.parametrize("how", ["gradient", "closure"])
def test_ivon_after_a_refused_step_the_next_iteration_is_clean(how):
    model, opt, x, y = _trained_ivon()
    snap = _snapshot(model, opt)
    if how == "gradient":
        torch.manual_seed(7)
        with opt.sampled_params(train=True):
            opt.zero_grad()
            (F.cross_entropy(model(x), y) * NAN).backward()
        with pytest.raises(FloatingPointError, match="gradient is NaN"):
            opt.step()
    else:

        def closure():
            with opt.sampled_params(train=True):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y) * NAN
                loss.backward()
            return loss

        with pytest.raises(FloatingPointError, match="non-finite loss"):
            opt.step(closure)
    _assert_unchanged(model, opt, snap)
    _ivon_iteration(model, opt, x, y, seed=8)
    ref_model, ref_opt = _fresh_ivon(snap)
    _ivon_iteration(ref_model, ref_opt, x, y, seed=8)
    _assert_same_run(model, opt, ref_model, ref_opt)


# ---------------------------------------------------------------------------------------------
# IVON: hyperparameters, in the constructor and at every step (cases 3, 4, 5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=INF), "lr"),
        (dict(lr=NAN), "lr"),
        (dict(beta1=1.0), "beta1"),
        (dict(beta1=1.5), "beta1"),
        (dict(beta2=1.0 + 1e-9), "beta2"),
    ],
)
def test_ivon_constructor_refuses(kwargs, name):
    args = dict(IVON_ARGS, **kwargs)
    with pytest.raises(ValueError, match=name):
        IVON(_mlp().parameters(), **args)


def test_ivon_accepts_the_closed_ends_beta1_zero_and_beta2_one():
    model, (x, y) = _mlp(), _data()
    opt = IVON(model.parameters(), **dict(IVON_ARGS, beta1=0.0, beta2=1.0))
    before = [p.detach().clone() for p in model.parameters()]
    _ivon_iteration(model, opt, x, y, seed=1)
    assert all(torch.isfinite(p).all() and not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    # beta2 = 1 freezes the Hessian estimate at hess_init
    assert all(torch.equal(opt.state[p]["hess"], torch.full_like(p, 0.5)) for p in model.parameters())


@pytest.mark.parametrize(
    "name, value",
    [
        ("lr", -0.05),  # a scheduler run past its end
        ("lr", INF),
        ("lr", NAN),
        ("beta1", 1.0),
        ("beta1", -0.1),
        ("beta2", 1.5),
        ("ess", 0.0),
        ("hess_init", -1.0),
        ("weight_decay", -1e-3),
        ("clip_radius", 0.0),
        ("hess_approx", "exact"),
    ],
)
def test_ivon_refuses_a_bad_group_hyperparameter_at_step_and_changes_nothing(name, value):
    model, opt, x, y = _trained_ivon(two_groups=True)
    snap = _snapshot(model, opt)
    torch.manual_seed(7)
    with opt.sampled_params(train=True):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
    opt.param_groups[1][name] = value  # set after the sample, as a scheduler's step would
    with pytest.raises(ValueError, match=rf"IVON step 4, param_groups\[1\]: .*{name}={value!r}"):
        opt.step()
    _assert_unchanged(model, opt, snap)
    with pytest.raises(ValueError, match=rf"param_groups\[1\]: .*{name}"):
        with opt.sampled_params(train=True):  # sampling refuses it too
            pass
    _assert_unchanged(model, opt, snap)


def test_ivon_negative_scheduled_lr_is_refused_and_training_resumes_after_the_fix():
    model, opt, x, y = _trained_ivon(two_groups=True)
    snap = _snapshot(model, opt)
    torch.manual_seed(7)
    with opt.sampled_params(train=True):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
    opt.param_groups[1]["lr"] = -0.05
    with pytest.raises(ValueError, match=r"param_groups\[1\].*lr=-0\.05.*scheduler"):
        opt.step()
    opt.param_groups[1]["lr"] = 0.05
    _ivon_iteration(model, opt, x, y, seed=8)
    ref_model, ref_opt = _fresh_ivon(snap, two_groups=True)
    _ivon_iteration(ref_model, ref_opt, x, y, seed=8)
    _assert_same_run(model, opt, ref_model, ref_opt)


# ---------------------------------------------------------------------------------------------
# IVON: complex and non-floating parameters (case 6)


def test_ivon_refuses_complex_parameters_in_the_constructor():
    with pytest.raises(ValueError, match="floating-point"):
        IVON([torch.zeros(3, dtype=torch.complex64, requires_grad=True)], **IVON_ARGS)


@pytest.mark.parametrize(
    "group, match",
    [
        ({"params": [torch.zeros(2, dtype=torch.complex64, requires_grad=True)]}, "floating-point"),
        ({"params": [torch.zeros(2, requires_grad=True)], "lr": -1.0}, "lr"),
        ({"params": [torch.zeros(2, requires_grad=True)], "beta1": 1.0}, "beta1"),
    ],
)
def test_ivon_refused_add_param_group_leaves_the_optimizer_as_it_was(group, match):
    model, opt, x, y = _trained_ivon()
    snap = _snapshot(model, opt)
    with pytest.raises(ValueError, match=match) as err:
        opt.add_param_group(group)
    assert len(opt.param_groups) == 1  # the refused group was not kept
    assert str(err.value).startswith("IVON param_groups[1]: ")
    _assert_unchanged(model, opt, snap)
    _ivon_iteration(model, opt, x, y, seed=8)  # and it still trains
    ref_model, ref_opt = _fresh_ivon(snap)
    _ivon_iteration(ref_model, ref_opt, x, y, seed=8)
    _assert_same_run(model, opt, ref_model, ref_opt)


@pytest.mark.filterwarnings("ignore:Complex modules")
@pytest.mark.parametrize("trained", [False, True])
def test_ivon_refuses_a_model_converted_to_complex_after_construction(trained):
    model, opt, x, y = _trained_ivon(steps=2 if trained else 0)
    model.to(torch.complex64)
    with pytest.raises(ValueError, match="floating-point parameters only, got one of dtype torch.complex64"):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            model(x.to(torch.complex64)).real.sum().backward()
        opt.step()
    assert len(opt.state) == (4 if trained else 0)  # no state was created or converted
    assert all(st["hess"].dtype == torch.float32 for st in opt.state.values())


# ---------------------------------------------------------------------------------------------
# VON helpers


DTYPE = torch.float64


def _von_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(30, 2, generator=g, dtype=DTYPE)
    y = (x @ torch.tensor([1.5, -1.0], dtype=DTYPE) + 0.3 * torch.randn(30, generator=g, dtype=DTYPE) > 0).to(DTYPE)
    model = torch.nn.Linear(2, 1).to(DTYPE)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-0.5, 0.5]], dtype=DTYPE))
        model.bias.fill_(0.1)
    return model, x, y


VON_ARGS = dict(lr=0.2, ess=30, hess_init=0.5, weight_decay=0.05)


def _von_loss(model, x, y):
    return F.binary_cross_entropy_with_logits(model(x)[:, 0], y)


def _von_draw(model, opt, x, y, scale: float = 1.0) -> None:
    with opt.sampled_params(train=True):
        (_von_loss(model, x, y) * scale).backward()


def _von_iteration(model, opt, x, y) -> None:
    _von_draw(model, opt, x, y)
    opt.step()


def _von(model, seed: int = 3, **kwargs) -> blr.VON:
    return blr.VON(model.parameters(), **dict(VON_ARGS, **kwargs), generator=torch.Generator().manual_seed(seed))


def _von_snapshot(model, opt) -> dict:
    return dict(
        weights=[p.detach().clone() for p in model.parameters()],
        hess=[opt.state[p]["hess"].clone() for p in model.parameters()],
        steps=opt._steps,
    )


def _assert_von_unchanged(model, opt, snap) -> None:
    """Weights, Hessian estimates and step count bit for bit as in the snapshot."""
    for p, w, h in zip(model.parameters(), snap["weights"], snap["hess"]):
        assert torch.equal(p.detach(), w)
        assert torch.equal(opt.state[p]["hess"], h)
    assert opt._steps == snap["steps"]


def _von_copy(model, opt, seed_state) -> tuple[torch.nn.Module, blr.VON]:
    """A new model and VON with the same weights, Hessians, step count and generator state (and no samples)."""
    new_model, _, _ = _von_problem()
    with torch.no_grad():
        for p, q in zip(new_model.parameters(), model.parameters()):
            p.copy_(q)
    new = _von(new_model, seed=12345)
    for p, q in zip(new_model.parameters(), model.parameters()):
        new.state[p]["hess"] = opt.state[q]["hess"].clone()
    new._steps = opt._steps
    new.generator.set_state(seed_state)
    return new_model, new


def _assert_same_von(model_a, opt_a, model_b, opt_b) -> None:
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.isfinite(pa).all()
        assert torch.equal(pa, pb)
        assert torch.equal(opt_a.state[pa]["hess"], opt_b.state[pb]["hess"])
    assert opt_a._steps == opt_b._steps


# ---------------------------------------------------------------------------------------------
# VON: step inside sampled_params (case 7), nesting


def test_von_step_inside_sampled_params_raises_and_loses_nothing():
    model, x, y = _von_problem()
    opt = _von(model)
    ref_model, _, _ = _von_problem()
    ref = _von(ref_model)
    _von_draw(model, opt, x, y)  # one sample pending
    with opt.sampled_params(train=True):
        _von_loss(model, x, y).backward()
        with pytest.raises(RuntimeError, match=r"step\(\) cannot be called inside sampled_params"):
            opt.step()
    opt.step()
    for _ in range(2):
        _von_draw(ref_model, ref, x, y)
    ref.step()
    _assert_same_von(model, opt, ref_model, ref)


def test_von_sampled_params_cannot_be_nested():
    model, x, y = _von_problem()
    opt = _von(model)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="nested"):
        with opt.sampled_params(), opt.sampled_params():
            pass
    assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))


# ---------------------------------------------------------------------------------------------
# VON: exact resume (case 8)


@pytest.mark.parametrize("new_generator", ["other seed", "none"])
def test_von_resume_from_state_dict_is_bit_for_bit(new_generator):
    model, x, y = _von_problem()
    opt = _von(model)
    for _ in range(10):
        _von_iteration(model, opt, x, y)

    half, _, _ = _von_problem()
    opt_half = _von(half)
    for _ in range(5):
        _von_iteration(half, opt_half, x, y)
    buf = io.BytesIO()
    torch.save({"model": half.state_dict(), "opt": opt_half.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    resumed, _, _ = _von_problem()
    resumed.load_state_dict(saved["model"])
    gen = torch.Generator().manual_seed(777) if new_generator == "other seed" else None
    opt_resumed = blr.VON(resumed.parameters(), **VON_ARGS, generator=gen)
    opt_resumed.load_state_dict(saved["opt"])
    for _ in range(5):
        _von_iteration(resumed, opt_resumed, x, y)
    _assert_same_von(model, opt, resumed, opt_resumed)


def test_von_load_state_dict_does_not_share_tensors_with_the_source():
    model, x, y = _von_problem()
    opt = _von(model)
    _von_iteration(model, opt, x, y)
    other_model, _, _ = _von_problem()
    other = _von(other_model)
    other.load_state_dict(opt.state_dict())
    for p, q in zip(model.parameters(), other_model.parameters()):
        for k in ("hess", "grad_sum", "hess_sum"):
            assert opt.state[p][k].data_ptr() != other.state[q][k].data_ptr(), k
    snap = _von_snapshot(model, opt)
    _von_draw(other_model, other, x, y)  # a pending sample in the copy ...
    for p in model.parameters():  # ... is not pending in the original
        assert torch.equal(opt.state[p]["grad_sum"], torch.zeros_like(p))
    _assert_von_unchanged(model, opt, snap)


def test_von_deepcopy_keeps_generator_and_counts():
    model, x, y = _von_problem()
    opt = _von(model)
    _von_iteration(model, opt, x, y)
    twin = copy.deepcopy(opt)  # copies the optimizer only; its state tensors are new
    assert twin._steps == 1 and twin.generator is not opt.generator
    assert torch.equal(twin.generator.get_state(), opt.generator.get_state())


# ---------------------------------------------------------------------------------------------
# VON: an exception inside the training block (case 9)


def test_von_exception_inside_the_block_leaks_no_gradient_into_the_next_sample():
    model, x, y = _von_problem()
    opt = _von(model)
    _von_iteration(model, opt, x, y)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(KeyError):
        with opt.sampled_params(train=True):
            _von_loss(model, x, y).backward()
            raise KeyError("boom")
    assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())
    ref_model, ref = _von_copy(model, opt, opt.generator.get_state())
    _von_iteration(model, opt, x, y)
    _von_iteration(ref_model, ref, x, y)
    _assert_same_von(model, opt, ref_model, ref)


def test_von_evaluation_sample_gradient_does_not_leak_into_a_training_sample():
    model, x, y = _von_problem()
    opt = _von(model)
    with opt.sampled_params(train=False):
        _von_loss(model, x, y).backward()  # e.g. a gradient norm logged at a sample
    ref_model, ref = _von_copy(model, opt, opt.generator.get_state())
    _von_iteration(model, opt, x, y)
    _von_iteration(ref_model, ref, x, y)
    _assert_same_von(model, opt, ref_model, ref)


# ---------------------------------------------------------------------------------------------
# VON: add_param_group (case 10)


def test_von_add_param_group_optimises_the_new_group_like_a_constructor_group():
    model, x, y = _von_problem()
    opt = blr.VON([model.weight], **VON_ARGS, generator=torch.Generator().manual_seed(3))
    opt.add_param_group({"params": [model.bias], "lr": 0.5, "hess_init": 2.0})
    ref_model, _, _ = _von_problem()
    ref = blr.VON([{"params": [ref_model.weight]}, {"params": [ref_model.bias], "lr": 0.5, "hess_init": 2.0}],
                  **VON_ARGS, generator=torch.Generator().manual_seed(3))
    bias0 = model.bias.detach().clone()
    for _ in range(3):
        _von_iteration(model, opt, x, y)
        _von_iteration(ref_model, ref, x, y)
    assert not torch.equal(model.bias.detach(), bias0)
    _assert_same_von(model, opt, ref_model, ref)


@pytest.mark.parametrize(
    "group, error, match",
    [
        ({"params": [torch.zeros(2, dtype=torch.complex128, requires_grad=True)]}, ValueError, "floating-point"),
        ({"params": [torch.zeros(2, dtype=DTYPE, requires_grad=True)], "lr": 2.0}, ValueError, r"lr must be in \(0, 1\]"),
    ],
)
def test_von_refused_add_param_group_leaves_the_optimizer_as_it_was(group, error, match):
    model, x, y = _von_problem()
    opt = _von(model)
    with pytest.raises(error, match=match):
        opt.add_param_group(group)
    assert len(opt.param_groups) == 1
    _von_iteration(model, opt, x, y)


def test_von_add_param_group_between_a_sample_and_its_step_raises():
    model, x, y = _von_problem()
    opt = blr.VON([model.weight], **VON_ARGS)
    _von_draw(model, opt, x, y)
    with pytest.raises(RuntimeError, match="between steps"):
        opt.add_param_group({"params": [model.bias]})
    assert len(opt.param_groups) == 1


def test_von_refuses_complex_parameters_in_the_constructor():
    with pytest.raises(ValueError, match="floating-point"):
        blr.VON([torch.zeros(3, dtype=torch.complex128, requires_grad=True)], **VON_ARGS)


# ---------------------------------------------------------------------------------------------
# VON: non-finite gradients, bad precision and bad hyperparameters at every step (case 11)


@pytest.mark.parametrize("bad", [NAN, INF])
def test_von_refuses_a_non_finite_gradient_changes_nothing_and_recovers(bad):
    model, x, y = _von_problem()
    opt = _von(model)
    _von_iteration(model, opt, x, y)
    snap = _von_snapshot(model, opt)
    with opt.sampled_params(train=True):
        _von_loss(model, x, y).backward()
        model.bias.grad[0] = bad  # the second parameter only: the first must not move either
    with pytest.raises(FloatingPointError, match=r"VON step 2: a gradient is NaN or infinite") as err:
        opt.step()
    _assert_von_unchanged(model, opt, snap)
    assert "(parameter of shape (1,))" in str(err.value)
    ref_model, ref = _von_copy(model, opt, opt.generator.get_state())
    _von_iteration(model, opt, x, y)  # the bad sample was discarded
    _von_iteration(ref_model, ref, x, y)
    _assert_same_von(model, opt, ref_model, ref)


def test_von_non_positive_precision_changes_nothing():
    model, x, y = _von_problem()
    opt = _von(model, lr=1.0, weight_decay=0.0)
    snap = _von_snapshot(model, opt)
    with opt.sampled_params(train=True):
        # the weight's loss is convex, the bias's concave: the bias precision turns negative
        (_von_loss(model, x, y) - 500 * model.bias.square().sum()).backward()
    with pytest.raises(ValueError, match="VON step 1: the precision"):
        opt.step()
    _assert_von_unchanged(model, opt, snap)


@pytest.mark.parametrize(
    "name, value",
    [
        ("lr", -0.1),  # a scheduler run past its end
        ("lr", 0.0),
        ("lr", 1.5),
        ("lr", INF),
        ("lr", NAN),
        ("ess", 0.0),
        ("ess", INF),
        ("weight_decay", -0.01),
        ("weight_decay", NAN),
        ("hess_approx", "exact"),
    ],
)
def test_von_refuses_a_bad_group_hyperparameter_at_step_and_changes_nothing(name, value):
    model, x, y = _von_problem()
    opt = blr.VON([{"params": [model.weight]}, {"params": [model.bias]}], **VON_ARGS,
                  generator=torch.Generator().manual_seed(3))
    _von_iteration(model, opt, x, y)
    snap = _von_snapshot(model, opt)
    _von_draw(model, opt, x, y)
    opt.param_groups[1][name] = value
    with pytest.raises(ValueError, match=rf"VON step 2, param_groups\[1\]: {name}"):
        opt.step()
    _assert_von_unchanged(model, opt, snap)
    with pytest.raises(ValueError, match=rf"param_groups\[1\]: {name}"):
        with opt.sampled_params(train=True):
            pass
    _assert_von_unchanged(model, opt, snap)

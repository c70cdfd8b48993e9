"""Stochastic gradient Langevin dynamics and friends (chapter 3, "Stochastic gradient Langevin dynamics").

All samplers here follow the book's one scaling convention (see the conventions page,
``book/conventions.md``, "The one scaling convention"): the potential is the negative log posterior
over the whole data set,

.. math:: U(\\theta) = -\\log p(\\theta) - \\sum_{i=1}^N \\log p(y_i \\mid x_i, \\theta),

a minibatch of size :math:`n` estimates it without bias by scaling the likelihood sum by :math:`N/n`
(:func:`neg_log_posterior` does this), and SGLD steps
:math:`\\theta \\leftarrow \\theta - \\tfrac{\\mathrm{lr}}{2} \\nabla \\hat U + \\sqrt{\\mathrm{lr}\\,T}\\,\\xi`.

What lives here:

* :func:`sgld_step` and :func:`psgld_step`, the two updates as they read in the papers;
* :class:`SGLD` and :class:`pSGLD`, ``torch.optim.Optimizer`` subclasses that run them;
* :class:`RobbinsMonro`, the step-size schedule :math:`a(b+t)^{-\\gamma}` as a learning-rate scheduler;
* :func:`neg_log_posterior`, the minibatch estimate :math:`\\hat U` for classification and regression;
* :func:`sgld_sample`, many independent chains on a plain tensor, moved as one batch;
* :class:`StackedMLP`, many MLPs with one architecture evaluated (or trained as parallel chains) in one call;
* :class:`PosteriorSamples`, a store of posterior samples with a vectorised predictive;
* :func:`langevin_acceptance`, the Metropolis-Hastings acceptance probability of a Langevin proposal;
* :func:`convergence_diagnostics`, effective sample sizes and R-hat through ``arviz``.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .langevin import _has_diverged, run_chains

__all__ = [
    "sgld_step",
    "psgld_step",
    "SGLD",
    "pSGLD",
    "RobbinsMonro",
    "robbins_monro",
    "neg_log_posterior",
    "sgld_sample",
    "StackedMLP",
    "PosteriorSamples",
    "langevin_acceptance",
    "convergence_diagnostics",
]

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """True if every tensor is free of NaN and inf: one fused norm per tensor list, one host sync.

    A NaN or inf makes the 2-norm non-finite; a finite tensor whose norm overflows (entries beyond
    ~1e19 in float32) is confirmed elementwise before it counts as non-finite.
    """
    if not tensors:
        return True
    tensors = list(tensors)
    norms = torch._foreach_norm(tensors)
    if bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


_REFUSED_STEP = "the step was refused and changed nothing"
_REFUSED_GROUP = "the group was not added"


def _check_finite_grads(params, where: str) -> None:
    """Raise ``FloatingPointError`` naming ``where`` if a gradient of ``params`` holds NaN or inf."""
    grads = [p.grad for p in params]
    if not _all_finite(grads):
        bad = next(g for g in grads if not torch.isfinite(g).all())
        raise FloatingPointError(
            f"{where}: a gradient is NaN or infinite (parameter of shape {tuple(bad.shape)}). "
            f"Lower the learning rate, check the data for NaNs, or check the loss; {_REFUSED_STEP}."
        )


def _check_finite_loss(loss, step: int, name: str) -> None:
    if loss is not None and isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
        raise FloatingPointError(
            f"{name} step {step}: the loss returned by the closure is {loss.detach().flatten()[0].item()}. "
            f"Lower the learning rate or check the data and the model; {_REFUSED_STEP}."
        )


# The hyperparameters a group of SGLD or pSGLD may hold: (valid?, what they must be).
_HYPERPARAMETERS: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: 0 < v < math.inf, "a finite number > 0 (the step size)"),
    "temperature": (lambda v: 0 <= v < math.inf, "a finite number >= 0 (1 samples the posterior, 0 is gradient descent)"),
    "alpha": (lambda v: 0 <= v <= 1, "a number in [0, 1] (the decay of pSGLD's squared-gradient average)"),
    "eps": (lambda v: 0 < v < math.inf, "a finite number > 0 (pSGLD's stabiliser lambda)"),
    "num_data": (lambda v: 1 <= v < math.inf and v == int(v), "an integer >= 1 (the training-set size)"),
}


def _as_real(value) -> float | None:
    """``value`` as a float if it is a real number (not a bool, not a tensor), else ``None``."""
    if type(value) is float or type(value) is int:  # the common case, without the slower ABC check
        return float(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None


def _check_hyperparameters(group: dict, index: int, names: Sequence[str], where: str, refused: str) -> None:
    """Raise ``ValueError`` if one of the hyperparameters ``names`` of ``group`` is out of range.

    Plain comparisons of Python numbers, cheap enough for every step (a few microseconds). Names the
    group holds no value for are skipped (pSGLD's are filled in after the base constructor has added
    the groups).

    Args:
        group: a parameter group.
        index: its index in ``param_groups``.
        names: the keys to check (see ``_HYPERPARAMETERS``).
        where: names the call and the group, e.g. ``"SGLD step 3, param_groups[1]"``.
        refused: what the refusal leaves as it was, for the message.

    Raises:
        ValueError: naming ``where``, the hyperparameter, its value, the valid range and what to do.
    """
    values = {}
    for name in names:
        if name not in group:
            continue
        value = group[name]
        valid, rule = _HYPERPARAMETERS[name]
        number = _as_real(value)
        if number is not None and valid(number):  # NaN fails every rule
            values[name] = number
            continue
        kind = "" if number is not None else f" (a {type(value).__name__}; use a Python number)"
        raise ValueError(
            f"{where}: {name}={value!r}{kind} is out of range: it must be {rule}. If a learning-rate scheduler "
            f"or your own code sets param_groups[{index}][{name!r}], check that it stays in range (a scheduler run "
            f"past its end?) and set a valid value; {refused}."
        )
    if "lr" in values and "temperature" in values and not math.isfinite(values["lr"] * values["temperature"]):
        raise ValueError(
            f"{where}: lr * temperature = {group['lr']!r} * {group['temperature']!r} overflows, so the noise would "
            f"be infinite; lower lr or temperature; {refused}."
        )


def _check_real_floating(params, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` unless every tensor of ``params`` is real floating point.

    A complex parameter is refused: ``normal_`` on a complex tensor draws a complex normal whose real
    and imaginary parts each have half the variance, so it would be sampled at half the temperature.
    """
    for index, p in enumerate(params):
        if p.is_floating_point():
            continue
        if p.is_complex():
            raise ValueError(
                f"{where}: parameter {index} (shape {tuple(p.shape)}) has dtype {p.dtype}. SGLD and pSGLD sample real "
                "floating-point parameters only: the noise of a complex normal has half the variance in each real "
                "component, so a complex parameter would be sampled at the wrong temperature. Keep the model real "
                "(hold a complex weight as its real and imaginary parts, e.g. with torch.view_as_real)."
            )
        raise ValueError(
            f"{where}: parameter {index} (shape {tuple(p.shape)}) has dtype {p.dtype}; a Langevin step needs "
            "floating-point parameters (convert it with .float())."
        )


class _FlatBuffers:
    """One contiguous noise buffer per (parameter set, device, dtype), with views shaped like the parameters."""

    def __init__(self):
        self._cache: dict = {}

    def views(self, params: list[torch.Tensor]) -> list[tuple[torch.Tensor, list[int], list[torch.Tensor]]]:
        """Return ``[(flat, indices, views)]``: for each device/dtype, the flat buffer, which params, their views."""
        key = tuple(id(p) for p in params)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        groups: dict = {}
        for i, p in enumerate(params):
            groups.setdefault((p.device, p.dtype), []).append(i)
        out = []
        for (device, dtype), idx in groups.items():
            total = sum(params[i].numel() for i in idx)
            flat = torch.empty(total, device=device, dtype=dtype)
            views, offset = [], 0
            for i in idx:
                n = params[i].numel()
                views.append(flat[offset : offset + n].view_as(params[i]))
                offset += n
            out.append((flat, idx, views))
        if len(self._cache) > 8:  # parameter sets change rarely; keep memory bounded
            self._cache.clear()
        self._cache[key] = out
        return out


def _check_generator(generator, params_like) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
    for group in params_like:
        for p in group["params"]:
            if p.device.type != generator.device.type:
                raise ValueError(
                    f"the generator lives on {generator.device} but a parameter lives on {p.device}; "
                    f"create it with torch.Generator(device={str(p.device)!r})."
                )


# --------------------------------------------------------------------------------------------------
# the minibatch potential
# --------------------------------------------------------------------------------------------------


def neg_log_posterior(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_data: int,
    prior_precision: float,
    likelihood: str = "classification",
    noise_precision: float | None = None,
    *,
    chains: bool = False,
) -> torch.Tensor:
    """Unbiased minibatch estimate of the full-data negative log posterior :math:`\\hat U(\\theta)`.

    .. math::
        \\hat U(\\theta) = \\frac{\\lambda}{2}\\lVert\\theta\\rVert^2
        - \\frac{N}{n}\\sum_{i \\in \\text{batch}} \\log p(y_i \\mid x_i, \\theta)

    with a Gaussian prior :math:`\\mathcal N(0, \\lambda^{-1} I)` (constants dropped). Classification uses
    the softmax likelihood on the model's logits; regression a Gaussian
    :math:`\\mathcal N(y \\mid f(x), \\tau^{-1})` with noise precision :math:`\\tau`. Introduced in chapter 3;
    the scaling is the book's one convention (conventions page).

    With ``chains=True`` the model holds ``C`` independent chains (e.g. a :class:`StackedMLP`) and
    returns outputs with a leading chain dimension, ``(C, n, K)`` or ``(C, n)``; the result is
    :math:`\\sum_c \\hat U(\\theta_c)`, whose gradient with respect to chain ``c``'s parameters is
    :math:`\\nabla \\hat U(\\theta_c)`, so one :class:`SGLD` step moves every chain independently.

    Args:
        model: maps ``x`` to logits ``(n, K)`` (classification) or predictions ``(n,)``/``(n, 1)`` (regression).
        x: a minibatch of inputs, ``(n, ...)`` (or ``(C, n, ...)`` with ``chains=True``).
        y: labels ``(n,)`` (int64) or targets ``(n,)`` (float); with ``chains=True`` also ``(C, n)``.
        num_data: :math:`N`, the size of the whole training set.
        prior_precision: :math:`\\lambda \\ge 0`.
        likelihood: ``"classification"`` or ``"regression"``.
        noise_precision: :math:`\\tau > 0`, required for regression.
        chains: the model's outputs carry a leading chain dimension; sum the chains' potentials.

    Returns:
        A scalar tensor :math:`\\hat U` (call ``backward()`` on it).

    Raises:
        ValueError: on inconsistent sizes, a non-positive ``num_data``, a negative prior precision,
            an unknown likelihood, or a missing/non-positive noise precision.
    """
    n = y.shape[-1] if chains else x.shape[0]
    if n == 0 or (not chains and y.shape[0] != n):
        raise ValueError(f"x and y must hold the same non-zero number of examples, got {x.shape[0]} and {y.shape[0]}.")
    if num_data < n:
        raise ValueError(f"num_data ({num_data}) is the size of the whole training set and cannot be below the batch size {n}.")
    if not (_is_number(prior_precision) and prior_precision >= 0):
        raise ValueError(f"prior_precision must be a finite number >= 0, got {prior_precision!r}.")
    out = model(x)
    if chains:
        if out.dim() < 2 or out.shape[1] != n:
            raise ValueError(
                f"with chains=True the model must return (num_chains, n, ...) outputs; got {tuple(out.shape)} for n={n}."
            )
        num_chains = out.shape[0]
        if y.dim() == 1:
            y = y.expand(num_chains, n)
        if y.shape[:2] != (num_chains, n):
            raise ValueError(f"y must have shape (n,) or (num_chains, n) = ({num_chains}, {n}); got {tuple(y.shape)}.")
        out = out.reshape(num_chains * n, *out.shape[2:])
        y = y.reshape(num_chains * n)
    m = out.shape[0]
    if likelihood == "classification":
        log_lik = -F.cross_entropy(out, y, reduction="sum")
    elif likelihood == "regression":
        if noise_precision is None or not _is_number(noise_precision) or noise_precision <= 0:
            raise ValueError("regression needs a positive noise_precision (the inverse noise variance).")
        pred = out.reshape(m) if out.dim() > 1 and out.shape[-1] == 1 else out
        if pred.shape != y.shape:
            raise ValueError(f"regression predictions have shape {tuple(pred.shape)} but targets {tuple(y.shape)}.")
        log_lik = -0.5 * noise_precision * (pred - y).pow(2).sum() + 0.5 * m * math.log(noise_precision / (2 * math.pi))
    else:
        raise ValueError(f"likelihood must be 'classification' or 'regression', got {likelihood!r}.")
    prior = 0.5 * prior_precision * sum(p.pow(2).sum() for p in model.parameters())
    return prior - (num_data / n) * log_lik


# --------------------------------------------------------------------------------------------------
# SGLD and pSGLD
# --------------------------------------------------------------------------------------------------


def sgld_step(params, grads, lr: float, temperature: float, noise) -> None:
    r"""One SGLD step :cite:p:`welling2011sgld`, in place, for every tensor in ``params``:

    .. math::
        \theta \leftarrow \theta - \frac{\mathrm{lr}}{2}\,\nabla_\theta \hat U(\theta)
        + \sqrt{\mathrm{lr}\cdot T}\;\xi, \qquad \xi \sim \mathcal N(0, I).

    Args:
        params: the tensors :math:`\theta` (changed in place).
        grads: :math:`\nabla \hat U(\theta)`, one tensor per parameter.
        lr: the step size :math:`\mathrm{lr}` (the book's :math:`\eta`).
        temperature: :math:`T` (0 gives gradient descent with rate ``lr/2``).
        noise: one standard normal tensor :math:`\xi` per parameter (unused when ``T = 0``).
    """
    std = math.sqrt(lr * temperature)
    for theta, grad, xi in zip(params, grads, noise):
        theta.add_(grad, alpha=-lr / 2)  # drift: -(lr/2) grad U
        if std > 0:
            theta.add_(xi, alpha=std)  # diffusion: sqrt(lr T) xi


def psgld_step(params, grads, square_avgs, lr: float, num_data: int, temperature: float, alpha: float,
               eps: float, noise) -> None:
    r"""One pSGLD step :cite:p:`li2016psgld`, in place, with the RMSprop preconditioner :math:`G`:

    .. math::
        V \leftarrow \beta_2 V + (1-\beta_2)\,(\nabla \hat U / N)^{\odot 2}, \qquad
        G = 1 \oslash (\mathrm{eps} + \sqrt V), \qquad
        \theta \leftarrow \theta - \frac{\mathrm{lr}}{2}\, G \odot \nabla \hat U
        + \sqrt{\mathrm{lr}\, T}\; G^{1/2} \odot \xi.

    Args:
        params, grads, lr, temperature, noise: as in :func:`sgld_step`.
        square_avgs: :math:`V`, one tensor per parameter (changed in place).
        num_data: :math:`N`; alpha: the decay :math:`\beta_2`; eps: :math:`\mathrm{eps}`.
    """
    std = math.sqrt(lr * temperature)
    for theta, grad, v, xi in zip(params, grads, square_avgs, noise):
        v.mul_(alpha).addcmul_(grad, grad, value=(1 - alpha) / num_data**2)  # V <- beta2 V + (1 - beta2) (g/N)^2
        inv_g = v.sqrt().add_(eps)  # 1 / G = eps + sqrt(V)
        theta.addcdiv_(grad, inv_g, value=-lr / 2)  # drift: -(lr/2) G grad U
        if std > 0:
            theta.addcdiv_(xi, inv_g.sqrt_(), value=std)  # diffusion: sqrt(lr T) G^(1/2) xi


class SGLD(torch.optim.Optimizer):
    """Stochastic gradient Langevin dynamics :cite:p:`welling2011sgld`.

    .. math::
        \\theta \\leftarrow \\theta - \\frac{\\mathrm{lr}}{2}\\,\\nabla_\\theta \\hat U(\\theta)
        + \\sqrt{\\mathrm{lr}\\cdot T}\\;\\xi, \\qquad \\xi \\sim \\mathcal N(0, I),

    where :math:`\\hat U` is an unbiased minibatch estimate of the full-data negative log posterior
    (likelihood sum scaled by :math:`N/n`; see :func:`neg_log_posterior` and the conventions page,
    ``book/conventions.md``). With ``temperature=1`` the stationary distribution (as ``lr -> 0``) is the
    posterior :math:`\\propto e^{-U}`; ``temperature=0`` is gradient descent on :math:`U` with rate
    ``lr/2``. Welling & Teh's :math:`\\epsilon_t` is ``lr``. Step-size schedules
    :math:`a(b+t)^{-\\gamma}` are ordinary learning-rate schedulers (:class:`RobbinsMonro`).
    Parameters with a leading chain dimension (one row per chain) run independent chains in one step
    when :math:`\\hat U` is the sum of the chains' potentials. Introduced in chapter 3.

    Args:
        params: parameters or parameter groups.
        lr: the step size :math:`\\epsilon > 0`.
        temperature: :math:`T \\ge 0`.
        generator: optional ``torch.Generator`` for the injected noise (on the parameters' device).
        check_finite: check the gradients (and the closure's loss) for NaN/inf at every step.

    Raises:
        ValueError: for a non-positive ``lr``, a negative ``temperature`` (also in a group), a
            complex or non-floating-point parameter, or a generator on another device than the
            parameters.
        ValueError, FloatingPointError: from :meth:`step`, see there.
    """

    # the hyperparameters every group holds, checked at construction, in add_param_group and at every step
    _hyperparameters: tuple[str, ...] = ("lr", "temperature")

    def __init__(
        self,
        params,
        lr: float,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        *,
        check_finite: bool = True,
    ):
        if not (_is_number(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}.")
        if not (_is_number(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}.")
        super().__init__(params, dict(lr=lr, temperature=temperature))
        _check_generator(generator, self.param_groups)
        self.generator = generator
        self.num_steps = 0
        self.check_finite = bool(check_finite)
        self._own_generators: dict[str, torch.Generator] = {}  # device -> generator, without a user generator
        self._buffers = _FlatBuffers()

    def add_param_group(self, param_group: dict) -> None:
        """Add a parameter group (hyperparameters not given take the constructor's values).

        Raises:
            ValueError: if a hyperparameter of the group is out of range, a parameter is complex or
                not floating point, or lives on another device than the generator; the group is
                then not added.
        """
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        where = f"{type(self).__name__} param_groups[{index}]"
        try:
            _check_real_floating(group["params"], where)
            _check_hyperparameters(group, index, self._hyperparameters, where, _REFUSED_GROUP)
            _check_generator(getattr(self, "generator", None), [group])
        except (ValueError, TypeError):
            self.param_groups.pop()  # a refused group leaves the optimizer as it was
            raise

    def _closure_loss(self, closure):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        return loss

    def _checked_work(self, loss) -> list[tuple[dict, list[torch.Tensor]]]:
        """Check everything the coming step uses; return each group to update with its parameters that have gradients.

        Runs before anything changes, so that a refused step leaves the weights, the state, the step
        count and the noise generators as they were.

        Raises:
            ValueError: a hyperparameter of a group (whatever set it) is out of range, or a parameter
                with a gradient is complex or not floating point.
            FloatingPointError: with ``check_finite``, the closure's loss or a gradient is NaN or inf.
        """
        name, step = type(self).__name__, self.num_steps + 1
        if self.check_finite:
            _check_finite_loss(loss, step, name)
        work = []
        for index, group in enumerate(self.param_groups):
            where = f"{name} step {step}, param_groups[{index}]"
            _check_hyperparameters(group, index, self._hyperparameters, where, _REFUSED_STEP)
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            _check_real_floating(params, where)
            if self.check_finite:
                _check_finite_grads(params, where)
            work.append((group, params))
        return work

    @torch.no_grad()
    def step(self, closure=None):
        """Take one step using the gradients in ``p.grad`` (of :math:`\\hat U`).

        Every group's hyperparameters are checked first, whatever set them (a scheduler, your own
        code editing ``param_groups``), and so are the gradients (with ``check_finite``); a refused
        step changes nothing: not the weights, the state, the step count nor the noise generators.

        Args:
            closure: optional function that recomputes :math:`\\hat U`, calls ``backward()`` and returns it.

        Returns:
            The closure's loss, or ``None``.

        Raises:
            ValueError: a hyperparameter of a group is out of range (names the step, the group, the
                value and what to do), or a parameter is complex or not floating point.
            FloatingPointError: with ``check_finite``, a gradient or the closure's loss is NaN or
                infinite (names the step and the group).
        """
        loss = self._closure_loss(closure)
        work = self._checked_work(loss)
        self.num_steps += 1
        for group, params in work:
            self._update(group, params)
        return loss

    def _generator(self, device: torch.device) -> torch.Generator:
        """The noise generator: the user's, or the optimizer's own for ``device``, seeded from PyTorch's
        global generator at its first draw (so ``torch.manual_seed`` decides the noise, and
        ``state_dict`` holds everything a resumed run needs)."""
        if self.generator is not None:
            return self.generator
        key = str(torch.device(device))
        if key not in self._own_generators:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            self._own_generators[key] = torch.Generator(device=device).manual_seed(seed)
        return self._own_generators[key]

    def _standard_normal(self, params: list[torch.Tensor], temperature: float) -> list[torch.Tensor | None]:
        """:math:`\\xi \\sim \\mathcal N(0, I)` for every parameter, drawn by one ``normal_`` call per
        device and dtype into a reused flat buffer (one call is cheaper than one per tensor)."""
        noise: list[torch.Tensor | None] = [None] * len(params)
        if temperature > 0:
            for flat, idx, views in self._buffers.views(params):
                flat.normal_(generator=self._generator(flat.device))
                for i, view in zip(idx, views):
                    noise[i] = view
        return noise

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        """The SGLD step of one group's parameters (checked by :meth:`_checked_work`)."""
        lr, temperature = float(group["lr"]), float(group["temperature"])
        noise = self._standard_normal(params, temperature)
        sgld_step(params, [p.grad for p in params], lr, temperature, noise)

    def state_dict(self):
        """The optimizer state plus the step count and the noise generators' states (for exact resume)."""
        state = super().state_dict()
        state["num_steps"] = self.num_steps
        if self.generator is not None:
            state["generator"] = {str(self.generator.device): self.generator.get_state()}
        else:
            state["generator"] = {device: g.get_state() for device, g in self._own_generators.items()}
        return state

    def load_state_dict(self, state_dict):
        """Restore :meth:`state_dict`, including the noise generators, so a resumed run is identical.

        Raises:
            ValueError: for a state written by an older bdk (its noise came from other generators, so
                the run could not continue as it would have).
        """
        state_dict = dict(state_dict)
        if "noise" in state_dict:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: this state was written by an older bdk, whose noise came "
                "from other generators; a resumed run would mix the two. Delete the checkpoint and start again."
            )
        self.num_steps = state_dict.pop("num_steps", 0)
        saved = state_dict.pop("generator", None) or {}
        super().load_state_dict(state_dict)
        if self.generator is not None:
            if saved:
                self.generator.set_state(next(iter(saved.values())))
            return
        self._own_generators = {}
        for device, rng_state in saved.items():
            if torch.device(device).type == "cuda" and not torch.cuda.is_available():
                warnings.warn(f"{type(self).__name__}: the saved noise generator of {device} cannot be restored "
                              "without CUDA; the noise on the new device starts from a fresh seed.", stacklevel=2)
                continue
            self._own_generators[device] = torch.Generator(device=device)
            self._own_generators[device].set_state(rng_state)


class pSGLD(SGLD):
    """Preconditioned SGLD with an RMSprop preconditioner :cite:p:`li2016psgld`.

    .. math::
        \\bar g &= \\nabla \\hat U(\\theta) / N, \\qquad
        V \\leftarrow \\alpha V + (1-\\alpha)\\,\\bar g \\odot \\bar g, \\qquad
        G = \\operatorname{diag}\\bigl(1 \\oslash (\\lambda + \\sqrt{V})\\bigr), \\\\
        \\theta &\\leftarrow \\theta - \\frac{\\mathrm{lr}}{2}\\, G\\, \\nabla \\hat U(\\theta)
        + \\sqrt{\\mathrm{lr}\\, T}\\; G^{1/2} \\xi, \\qquad \\xi \\sim \\mathcal N(0, I).

    **Scale of the preconditioner.** :math:`V` averages the squared gradient *per data point*,
    :math:`\\bar g = \\nabla \\hat U / N` (the minibatch mean of the per-example gradients plus the prior
    term divided by :math:`N`), as in Li et al.'s Algorithm 1 and in the authors' MATLAB code, whose
    MNIST script uses ``alpha=0.99`` and ``eps`` (:math:`\\lambda`) ``=1e-5`` (our defaults). The drift
    uses the full-data gradient :math:`\\nabla \\hat U` of the book's convention (conventions page,
    ``book/conventions.md``).
    Because :math:`G \\approx 1/|\\bar g|`, a coordinate moves by about ``lr * N / 2`` per step at
    ``temperature=0``: this is RMSprop on the mean loss :math:`\\hat U/N` with learning rate
    ``lr * N / 2``, so pSGLD's ``lr`` is ~:math:`N` times smaller than a comparable RMSprop rate.
    Feeding :math:`\\nabla \\hat U` itself to :math:`V` would give the same sampler with ``lr`` and ``eps``
    rescaled by :math:`N` (:math:`G_{\\text{sum}} = G_{\\text{mean}}(\\lambda N)/N`); we keep the paper's
    per-data-point scale so that ``eps`` means what it means there.

    **The dropped correction term.** The exact preconditioned dynamics have an extra drift
    :math:`\\frac{\\mathrm{lr}}{2}\\Gamma(\\theta)`, :math:`\\Gamma_i = \\sum_j \\partial G_{ij}/\\partial\\theta_j`,
    because :math:`G` depends on :math:`\\theta`. It is dropped here, as in Li et al.'s experiments and
    their code: :math:`G` is a slowly moving average over past gradients, so :math:`\\Gamma` is small
    when :math:`\\alpha` is close to 1, and it is exactly zero for a fixed preconditioner
    (``alpha=1``, which freezes :math:`V` at its first value). Dropping it adds a bias that shrinks as
    the preconditioner changes more slowly.

    :math:`V` starts at the first :math:`\\bar g \\odot \\bar g` (as in the authors' code), not at zero.
    Introduced in chapter 3.

    Args:
        params: parameters or parameter groups.
        lr: the step size :math:`\\epsilon > 0` (same convention as :class:`SGLD`).
        num_data: :math:`N`, the training-set size (sets the per-data-point scale of :math:`V`).
        temperature: :math:`T \\ge 0`.
        alpha: decay of the squared-gradient average, in ``[0, 1]``.
        eps: the stabiliser :math:`\\lambda > 0` added to :math:`\\sqrt V` (per-data-point scale).
        generator: optional ``torch.Generator`` for the injected noise.
        check_finite: as in :class:`SGLD`.

    Raises:
        ValueError: for bad ``lr``, ``num_data``, ``temperature``, ``alpha`` or ``eps`` (also in a
            group), or a complex or non-floating-point parameter.
        ValueError, FloatingPointError: from :meth:`step`, as in :class:`SGLD`; ``alpha``, ``eps`` and
            ``num_data`` live in the groups and are checked at every step too.
    """

    _hyperparameters = ("lr", "temperature", "alpha", "eps", "num_data")

    def __init__(
        self,
        params,
        lr: float,
        num_data: int,
        temperature: float = 1.0,
        alpha: float = 0.99,
        eps: float = 1e-5,
        generator: torch.Generator | None = None,
        *,
        check_finite: bool = True,
    ):
        if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
            raise ValueError(f"num_data must be a positive integer (the training-set size), got {num_data!r}.")
        if not (_is_number(alpha) and 0 <= alpha <= 1):
            raise ValueError(f"alpha (the RMSprop decay) must be in [0, 1], got {alpha!r}.")
        if not (_is_number(eps) and eps > 0):
            raise ValueError(f"eps (the stabiliser lambda) must be a positive finite number, got {eps!r}.")
        super().__init__(params, lr, temperature, generator, check_finite=check_finite)
        for index, group in enumerate(self.param_groups):
            group.setdefault("alpha", alpha)
            group.setdefault("eps", eps)
            group.setdefault("num_data", num_data)
            _check_hyperparameters(group, index, self._hyperparameters, f"pSGLD param_groups[{index}]", "pSGLD was not built")
        self.defaults.update(alpha=alpha, eps=eps, num_data=num_data)

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        """The pSGLD step of one group's parameters (checked by :meth:`_checked_work`).

        :math:`V` starts at the first :math:`(\\nabla \\hat U / N)^{\\odot 2}`, which the kernel's
        average then leaves unchanged (up to rounding) at the first step.
        """
        num_data = group["num_data"]
        for p in params:
            if "square_avg" not in self.state[p]:
                self.state[p]["square_avg"] = (p.grad / num_data).square()
        noise = self._standard_normal(params, float(group["temperature"]))
        psgld_step(params, [p.grad for p in params], [self.state[p]["square_avg"] for p in params],
                   float(group["lr"]), num_data, float(group["temperature"]), float(group["alpha"]),
                   float(group["eps"]), noise)


# --------------------------------------------------------------------------------------------------
# step-size schedule
# --------------------------------------------------------------------------------------------------


def _check_gamma(gamma) -> None:
    if not (_is_number(gamma) and 0.5 < gamma <= 1):
        raise ValueError(
            f"gamma must be in (0.5, 1] so that the steps satisfy the Robbins-Monro conditions "
            f"(sum of lr_t infinite needs gamma <= 1, sum of lr_t^2 finite needs gamma > 0.5); got {gamma!r}."
        )


def robbins_monro(t, a: float, b: float, gamma: float):
    """The decreasing step size :math:`\\mathrm{lr}_t = a\\,(b + t)^{-\\gamma}` :cite:p:`robbins1951stochastic`.

    For :math:`\\gamma \\in (0.5, 1]` the steps satisfy :math:`\\sum_t \\mathrm{lr}_t = \\infty` and
    :math:`\\sum_t \\mathrm{lr}_t^2 < \\infty` :cite:p:`welling2011sgld`. Introduced in chapter 3.

    Args:
        t: the step index (a number, NumPy array or tensor), ``t >= 0``.
        a, b: positive constants.
        gamma: the decay exponent in ``(0.5, 1]``.

    Returns:
        :math:`a (b+t)^{-\\gamma}`, of the type of ``t``.

    Raises:
        ValueError: for non-positive ``a``/``b`` or ``gamma`` outside ``(0.5, 1]``.
    """
    if not (_is_number(a) and a > 0 and _is_number(b) and b > 0):
        raise ValueError(f"a and b must be positive finite numbers, got a={a!r}, b={b!r}.")
    _check_gamma(gamma)
    return a * (b + t) ** (-gamma)


class RobbinsMonro(torch.optim.lr_scheduler.LRScheduler):
    """Learning-rate scheduler :math:`\\mathrm{lr}_t = a\\,(b + t)^{-\\gamma}` for SGLD :cite:p:`welling2011sgld`.

    An ordinary ``torch.optim.lr_scheduler`` scheduler: call ``scheduler.step()`` after each
    ``optimizer.step()``; step ``t`` (counting from 0) then uses :math:`a(b+t)^{-\\gamma}` in every
    parameter group. With :math:`\\gamma \\in (0.5, 1]` the Robbins-Monro conditions
    :math:`\\sum_t \\mathrm{lr}_t = \\infty`, :math:`\\sum_t \\mathrm{lr}_t^2 < \\infty`
    :cite:p:`robbins1951stochastic` hold: the chain keeps moving, and the discretisation error and the
    gradient noise die out. :meth:`from_range` picks ``a`` and ``b`` from a first and last step size,
    as Welling & Teh did. Introduced in chapter 3.

    Args:
        optimizer: e.g. an :class:`SGLD` instance.
        a, b: positive constants.
        gamma: the decay exponent in ``(0.5, 1]``.
        last_epoch: for resuming; ``-1`` on a fresh start.

    Raises:
        ValueError: for non-positive ``a``/``b`` or ``gamma`` outside ``(0.5, 1]``.
    """

    def __init__(self, optimizer, a: float, b: float, gamma: float, last_epoch: int = -1):
        robbins_monro(0, a, b, gamma)  # validates
        self.a, self.b, self.gamma = float(a), float(b), float(gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        lr = self.a * (self.b + max(self.last_epoch, 0)) ** (-self.gamma)
        return [lr for _ in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return self.get_lr()

    @staticmethod
    def constants(lr_start: float, lr_end: float, num_steps: int, gamma: float) -> tuple[float, float]:
        """``(a, b)`` such that :math:`\\mathrm{lr}_0` is ``lr_start`` and :math:`\\mathrm{lr}_{T-1}` is ``lr_end``.

        .. math:: b = \\frac{T-1}{(\\mathrm{lr}_{\\rm start}/\\mathrm{lr}_{\\rm end})^{1/\\gamma} - 1}, \\qquad a = \\mathrm{lr}_{\\rm start}\\, b^{\\gamma}.

        Raises:
            ValueError: unless ``lr_start > lr_end > 0``, ``num_steps >= 2`` and ``gamma`` is in ``(0.5, 1]``.
        """
        _check_gamma(gamma)
        if not (_is_number(lr_start) and _is_number(lr_end) and lr_start > lr_end > 0):
            raise ValueError(f"need lr_start > lr_end > 0, got lr_start={lr_start!r}, lr_end={lr_end!r}.")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}.")
        b = (num_steps - 1) / ((lr_start / lr_end) ** (1.0 / gamma) - 1.0)
        a = lr_start * b**gamma
        return a, b

    @classmethod
    def from_range(cls, optimizer, lr_start: float, lr_end: float, num_steps: int, gamma: float = 0.55):
        """A schedule that decays from ``lr_start`` (step 0) to ``lr_end`` (step ``num_steps - 1``)."""
        a, b = cls.constants(lr_start, lr_end, num_steps, gamma)
        return cls(optimizer, a, b, gamma)


# --------------------------------------------------------------------------------------------------
# many chains on plain tensors
# --------------------------------------------------------------------------------------------------


def sgld_sample(
    grad_U: Callable[[torch.Tensor, int], torch.Tensor],
    theta0: torch.Tensor,
    lr: float | Callable[[int], float],
    num_steps: int,
    temperature: float = 1.0,
    burn_in: int = 0,
    thin: int = 1,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run independent SGLD chains on a plain tensor, all chains moved by one batched update.

    .. math::
        \\theta^{(c)}_{t+1} = \\theta^{(c)}_t - \\frac{\\mathrm{lr}_t}{2}\\nabla \\hat U_t(\\theta^{(c)}_t)
        + \\sqrt{\\mathrm{lr}_t T}\\,\\xi^{(c)}_t

    for every chain ``c`` (the rows of ``theta0``), with the book's scaling convention (conventions page,
    ``book/conventions.md``) :cite:p:`welling2011sgld`. ``grad_U(theta, t)`` returns the gradient of each
    chain's own minibatch estimate :math:`\\hat U_t` (so each chain can draw its own minibatch).
    Introduced in chapter 3.

    Args:
        grad_U: ``(theta (C, ...), step t) -> gradient (C, ...)``.
        theta0: initial states, ``(C, ...)`` (one row per chain).
        lr: a constant step size or a function ``t -> lr_t`` (e.g. ``lambda t: robbins_monro(t, a, b, 0.55)``).
        num_steps: number of steps.
        temperature: :math:`T \\ge 0`.
        burn_in: steps discarded at the start.
        thin: keep every ``thin``-th state after the burn-in.
        generator: optional ``torch.Generator`` on ``theta0``'s device.
        progress: show a progress bar.

    Returns:
        The kept states, ``(num_kept, C, ...)`` with ``num_kept = (num_steps - burn_in) // thin``; the
        state after step ``t`` (1-based) is kept when ``t > burn_in`` and ``(t - burn_in) % thin == 0``.

    Raises:
        ValueError: for bad sizes, counts, step sizes, a non-finite ``theta0`` or a gradient of the wrong shape.
        FloatingPointError: when a gradient or a chain is not finite. The message names the step and
            the cause: ``grad_U`` returning NaN/inf at finite positions (check ``grad_U``), or chains
            that ran away or overflowed (lower ``lr``).
    """
    if not isinstance(theta0, torch.Tensor) or not theta0.is_floating_point() or theta0.dim() < 1:
        raise ValueError("theta0 must be a floating-point tensor of shape (num_chains, ...).")
    for name, value, low in (("num_steps", num_steps, 1), ("thin", thin, 1), ("burn_in", burn_in, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if burn_in >= num_steps:
        raise ValueError(f"burn_in ({burn_in}) must be smaller than num_steps ({num_steps}).")
    if not (_is_number(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}.")
    if not callable(lr) and not (_is_number(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number or a function of the step, got {lr!r}.")
    if not bool(torch.isfinite(theta0).all()):
        raise ValueError("theta0 contains NaN or infinite values.")
    if generator is not None and generator.device.type != theta0.device.type:
        raise ValueError(f"the generator lives on {generator.device} but theta0 on {theta0.device}.")
    noise = torch.empty_like(theta0) if temperature > 0 else None

    def step(theta: torch.Tensor, k: int) -> torch.Tensor:  # step k = 1, 2, ... of the chain
        t = k - 1
        lr_t = float(lr(t)) if callable(lr) else lr
        if not (lr_t > 0 and math.isfinite(lr_t)):
            raise ValueError(f"sgld_sample step {k}: lr_t must be a positive finite number, got {lr_t!r}.")
        g = grad_U(theta, t)
        if g.shape != theta.shape:
            raise ValueError(f"grad_U returned shape {tuple(g.shape)} for theta of shape {tuple(theta.shape)}.")
        # one host sync per step: the gradient, and theta as the previous step left it
        if not bool(torch.isfinite(g).all() & torch.isfinite(theta).all()):
            raise _sgld_sample_error(t, g, theta, theta0)
        xi = None if noise is None else noise.normal_(generator=generator)
        sgld_step([theta], [g], lr_t, temperature, [xi])
        return theta

    def check(theta: torch.Tensor, first: int, last: int) -> None:  # the steps check their gradients; the end its chains
        if last == num_steps and not bool(torch.isfinite(theta).all()):
            raise _sgld_sample_error(num_steps, None, theta, theta0)

    _, kept = run_chains(step, theta0.detach().clone(), num_steps, burn_in=burn_in, thin=thin,
                         return_trajectory=True, check=check, check_every=num_steps, progress=progress, desc="SGLD")
    return kept[1:]  # the states after steps burn_in + thin, burn_in + 2 thin, ...


def _sgld_sample_error(t: int, g: torch.Tensor | None, theta: torch.Tensor, theta0: torch.Tensor) -> FloatingPointError:
    """The error for a non-finite value met before step ``t + 1`` of :func:`sgld_sample`, naming its cause.

    ``theta`` holds the chains after step ``t`` and ``g`` their gradient at step ``t + 1`` (``None``
    after the last step). Non-finite chains overflowed at step ``t``; a non-finite gradient at finite
    chains is ``grad_U``'s fault unless the chains had run away from ``theta0`` (then lr is too large).
    """
    rows = theta.reshape(theta.shape[0], -1)
    bad_theta = ~torch.isfinite(rows).all(1)
    num_chains = theta.shape[0]
    if bool(bad_theta.any()):
        return FloatingPointError(
            f"sgld_sample step {t}: {int(bad_theta.sum())} of {num_chains} chains overflowed to inf or NaN "
            "although their gradient was finite: the chains diverged; lower lr."
        )
    bad = ~torch.isfinite(g.reshape(num_chains, -1)).all(1)
    reach, start = float(rows[bad].abs().max()), float(theta0.abs().max())
    count = f"{int(bad.sum())} of {num_chains} chains"
    if _has_diverged(reach, start):
        return FloatingPointError(
            f"sgld_sample step {t + 1}: grad_U overflowed for {count} after they had run away to |theta| = "
            f"{reach:.3g} (from |theta0| <= {start:.3g}): the chains diverged; lower lr."
        )
    return FloatingPointError(
        f"sgld_sample step {t + 1}: grad_U returned NaN or infinite values for {count} at finite positions "
        f"(|theta| <= {reach:.3g}). The chains had not run away, so the step size is not the cause: check "
        "grad_U there (a log or square root of a negative number, a division by zero, an overflow inside it)."
    )


def langevin_acceptance(
    U: Callable[[torch.Tensor], torch.Tensor],
    grad_U: Callable[[torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    lr: float,
    generator: torch.Generator | None = None,
    minibatch_grads: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Metropolis-Hastings acceptance probability of one Langevin (SGLD) proposal from each row of ``theta``.

    .. math::
        a(\\theta, \\theta') = \\min\\Bigl(1, \\frac{e^{-U(\\theta')}\\,q(\\theta \\mid \\theta')}{e^{-U(\\theta)}\\,q(\\theta' \\mid \\theta)}\\Bigr).

    With the exact gradient the proposal is
    :math:`\\theta' = \\theta - \\tfrac{\\mathrm{lr}}{2}\\nabla U(\\theta) + \\sqrt{\\mathrm{lr}}\\,\\xi` and
    :math:`q(\\theta' \\mid \\theta) = \\mathcal N(\\theta - \\tfrac{\\mathrm{lr}}{2}\\nabla U(\\theta), \\mathrm{lr}\\,I)`
    (MALA's proposal :cite:p:`roberts1996mala`). With ``minibatch_grads`` the proposal is SGLD's: it
    uses the gradient of a minibatch drawn uniformly from the ``B`` minibatches that
    ``minibatch_grads`` lists, so its density is the exact mixture
    :math:`q(\\theta' \\mid \\theta) = \\frac1B\\sum_b \\mathcal N(\\theta - \\tfrac{\\mathrm{lr}}{2}\\nabla \\hat U_b(\\theta), \\mathrm{lr}\\,I)`.
    As ``lr -> 0`` the probability tends to 1, which is why SGLD can skip the Metropolis-Hastings
    test :cite:p:`welling2011sgld`. Introduced in chapter 3 (conventions page: ``book/conventions.md``).

    Args:
        U: ``(C, d) -> (C,)`` the exact potential.
        grad_U: ``(C, d) -> (C, d)`` its gradient.
        theta: current states ``(C, d)``, e.g. exact posterior draws.
        lr: the step size.
        generator: optional ``torch.Generator``.
        minibatch_grads: optional ``(C, d) -> (B, C, d)``, the gradients of all ``B`` equally likely
            minibatch estimates :math:`\\hat U_b` (the SGLD proposal); ``None`` for the exact gradient.

    Returns:
        The acceptance probabilities, ``(C,)``.

    Raises:
        ValueError: for a bad ``lr`` or shape of ``theta``.
        FloatingPointError: when a probability is NaN (``U`` or ``grad_U`` gave NaN or inf).
    """
    if not (_is_number(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}.")
    if theta.dim() != 2:
        raise ValueError(f"theta must have shape (num_chains, dim); got {tuple(theta.shape)}.")

    def log_q(to, frm, grads):  # log density (up to a constant) of proposing `to` from `frm`
        if grads is None:
            return -((to - frm + 0.5 * lr * grad_U(frm)) ** 2).sum(-1) / (2 * lr)
        comps = -((to.unsqueeze(0) - frm.unsqueeze(0) + 0.5 * lr * grads) ** 2).sum(-1) / (2 * lr)  # (B, C)
        return torch.logsumexp(comps, dim=0) - math.log(comps.shape[0])

    with torch.no_grad():
        xi = torch.randn(theta.shape, dtype=theta.dtype, device=theta.device, generator=generator)
        if minibatch_grads is None:
            g, grads_here = grad_U(theta), None
        else:
            grads_here = minibatch_grads(theta)
            pick = torch.randint(0, grads_here.shape[0], (theta.shape[0],), device=theta.device, generator=generator)
            g = grads_here[pick, torch.arange(theta.shape[0], device=theta.device)]
        new = theta - 0.5 * lr * g + math.sqrt(lr) * xi
        grads_new = None if minibatch_grads is None else minibatch_grads(new)
        log_ratio = -U(new) + U(theta) + log_q(theta, new, grads_new) - log_q(new, theta, grads_here)
        bad = torch.isnan(log_ratio)
        if bool(bad.any()):
            raise FloatingPointError(
                f"langevin_acceptance: the acceptance probability is NaN for {int(bad.sum())} of {theta.shape[0]} "
                "chains: U or grad_U gave NaN or infinite values at the states or at their proposals. Check U and "
                "grad_U there, or lower lr if the proposals ran away."
            )
        return torch.exp(torch.clamp(log_ratio, max=0.0))


# --------------------------------------------------------------------------------------------------
# many MLPs in one call
# --------------------------------------------------------------------------------------------------

# Modules that act elementwise (or as the identity at prediction time): safe on any tensor shape.
_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Identity, nn.Dropout,
)


_INPLACE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_, nn.Identity: lambda h: h}


def _mlp_layout(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """If ``model`` is an ``nn.Sequential`` of Linear layers and elementwise activations (optionally
    starting with ``nn.Flatten``), return its ``(name, module)`` list; else ``None``."""
    if not isinstance(model, nn.Sequential):
        return None
    items = list(model.named_children())
    if not items or not any(isinstance(m, nn.Linear) for _, m in items):
        return None
    for i, (_, m) in enumerate(items):
        if isinstance(m, nn.Linear) or isinstance(m, _ELEMENTWISE):
            continue
        if isinstance(m, nn.Flatten) and i == 0 and m.start_dim == 1 and m.end_dim == -1:
            continue
        return None
    return items


def _stacked_mlp_forward(
    layout: list[tuple[str, nn.Module]], params: dict[str, torch.Tensor], x: torch.Tensor,
    saved: list | None = None,
) -> torch.Tensor:
    """Evaluate S MLPs with stacked parameters ``params[name] (S, ...)`` on ``x``: the one batched-MLP
    evaluator of the library (``StackedMLP``, ``PosteriorSamples``' fast path, and the flat-vector
    MLPs of chapter 6, ``bdk.distill.mlp_forward_flat`` and its hand-written backpropagation).

    ``layout`` holds Linear layers and elementwise modules only (a leading ``nn.Flatten`` is applied by
    the caller). ``x`` is shared, ``(n, d)``, or per model, ``(S, n, d)``. The activations are kept
    feature-major, ``(S, h, n)``, i.e. layer ``l`` computes :math:`H_l^{(s)} = W_l^{(s)} H_{l-1}^{(s)} + b_l^{(s)}`
    with the inputs along the columns. A shared input meets the S first-layer weights in one matrix
    product, ``[W_1^(1); ...; W_1^(S)] x^T`` (the stacked ``(S*h, d)`` weight is a view, no copy), so
    the input is read once and the product is one large GEMM; later layers are batched matrix
    products ``baddbmm(b, W, H)`` whose operands are all contiguous (weights as stored, ``(S, out, in)``)
    and whose long dimension is the number of inputs. (The input-major form ``H W^T`` has a tiny
    output dimension for small networks, ``out = 2`` say, where batched GEMMs run far below speed.)
    ``nn.Dropout`` is the identity here (prediction). Returns ``(S, n, out)``, a transposed view.

    ``saved``, a list, receives each Linear layer's input as ``(tensor, feature_major)``: the shared
    ``(n, d)`` or per-model ``(S, n, d)`` input of the first layer (``feature_major`` false), then the
    ``(S, in, n)`` activations (true), which is what a backward pass needs.
    """
    h = x
    feature_major = False  # True once a Linear has laid the activations out as (S, h, n)
    for name, m in layout:
        if isinstance(m, nn.Linear):
            if saved is not None:
                saved.append((h, feature_major))
            w = params[f"{name}.weight"]  # (S, out, in)
            b = params.get(f"{name}.bias")  # (S, out) or None
            s, out_f, in_f = w.shape
            if not feature_major and h.dim() == 2:  # shared input: one GEMM against all S weight matrices
                w2 = w.reshape(s * out_f, in_f)
                h = torch.mm(w2, h.t()) if b is None else torch.addmm(b.reshape(s * out_f, 1), w2, h.t())
                h = h.view(s, out_f, h.shape[-1])
            else:
                hb = h if feature_major else h.transpose(1, 2)  # (S, in, n)
                h = torch.bmm(w, hb) if b is None else torch.baddbmm(b.unsqueeze(-1), w, hb)
            feature_major = True
        elif isinstance(m, nn.Dropout):
            continue  # prediction uses every unit (eval mode)
        elif feature_major and not torch.is_grad_enabled() and type(m) in _INPLACE:
            # in place on our own activation (never on the caller's input): saves an allocation and a pass
            h = _INPLACE[type(m)](h)
        else:
            h = m(h)
    return h.transpose(1, 2) if feature_major else h


def _strip_flatten(layout, x: torch.Tensor, per_model: bool):
    if layout and isinstance(layout[0][1], nn.Flatten):
        x = x.flatten(2) if per_model else x.flatten(1)
        layout = layout[1:]
    return layout, x


class StackedMLP(nn.Module):
    """``S`` MLPs of one architecture held as stacked parameters and evaluated in one call.

    For a template ``nn.Sequential`` of ``nn.Linear`` layers and elementwise activations, every
    parameter gets a leading dimension of size ``S``. :meth:`forward` maps a shared input ``(n, d)`` (or
    one input per model, ``(S, n, d)``) to ``(S, n, K)``: the first layer is a single matrix product of
    the input with all ``S`` first-layer weights, the later layers are batched matrix products. Used
    two ways in chapter 3: as the fast path of :class:`PosteriorSamples`' predictive, and to run ``S``
    independent SGLD chains of a network as one batched model (with
    ``neg_log_posterior(..., chains=True)``, see the conventions page ``book/conventions.md``).
    ``nn.Dropout`` layers of the template are ignored (the identity).

    Args:
        template: the architecture (an ``nn.Sequential`` of Linear + elementwise activations).
        num_models: ``S``.
        init: ``"independent"`` (each model initialised afresh by ``reset_parameters``, seeded by the
            global generator) or ``"copy"`` (every model a copy of ``template``'s weights).

    Raises:
        TypeError: if ``template`` is not such an MLP.
        ValueError: for ``num_models < 1`` or an unknown ``init``.
    """

    def __init__(self, template: nn.Sequential, num_models: int, init: str = "independent"):
        super().__init__()
        layout = _mlp_layout(template)
        if layout is None:
            raise TypeError(
                "StackedMLP needs an nn.Sequential of nn.Linear layers and elementwise activations "
                "(ReLU, Tanh, GELU, ...), optionally starting with nn.Flatten; use PosteriorSamples' "
                "generic (vmap) path for other models."
            )
        if isinstance(num_models, bool) or not isinstance(num_models, int) or num_models < 1:
            raise ValueError(f"num_models must be a positive integer, got {num_models!r}.")
        if init not in ("independent", "copy"):
            raise ValueError(f"init must be 'independent' or 'copy', got {init!r}.")
        # The template only describes the architecture: keep it out of the module tree so that its
        # parameters are not part of parameters() (the sampler must not move them, the prior not count them).
        self.__dict__["template"] = copy.deepcopy(template).requires_grad_(False)
        self._layout_names = [name for name, _ in layout]
        models = []
        for _ in range(num_models):
            m = copy.deepcopy(template)
            if init == "independent":
                for mod in m.modules():
                    if isinstance(mod, nn.Linear):
                        mod.reset_parameters()
            models.append(m)
        self._param_names = [n for n, _ in template.named_parameters()]
        for name in self._param_names:
            stacked = torch.stack([dict(m.named_parameters())[name].detach() for m in models])
            self.register_parameter(name.replace(".", "__"), nn.Parameter(stacked))
        self.num_models = num_models

    @classmethod
    def from_stacked(cls, template: nn.Sequential, params: dict[str, torch.Tensor]) -> "StackedMLP":
        """Build from stacked parameters ``{name: (S, ...)}`` named as in ``template.named_parameters()``."""
        sizes = {v.shape[0] for v in params.values()}
        if len(sizes) != 1:
            raise ValueError(f"all stacked parameters need the same leading size, got {sorted(sizes)}.")
        out = cls(template, 1, init="copy")
        for name in out._param_names:
            if name not in params:
                raise ValueError(f"missing stacked parameter {name!r}.")
            setattr(out, name.replace(".", "__"), nn.Parameter(params[name].detach().clone()))
        out.num_models = sizes.pop()
        return out

    def stacked_parameters(self) -> dict[str, torch.Tensor]:
        """``{name: (S, ...)}`` with the template's parameter names."""
        return {name: getattr(self, name.replace(".", "__")) for name in self._param_names}

    def model(self, index: int) -> nn.Sequential:
        """A standalone copy of model ``index`` as an ordinary ``nn.Sequential``."""
        m = copy.deepcopy(self.template).requires_grad_(True)
        first = getattr(self, self._param_names[0].replace(".", "__"))
        m = m.to(device=first.device, dtype=first.dtype)
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(getattr(self, name.replace(".", "__"))[index])
        return m

    def forward(self, x: torch.Tensor, per_model: bool | None = None) -> torch.Tensor:
        """Map inputs to ``(S, n, K)`` outputs.

        Args:
            x: a shared input ``(n, ...)`` or one input per model ``(S, n, ...)``.
            per_model: whether ``x`` has a leading model dimension; by default ``True`` exactly when
                ``x`` has one more dimension than the template's input (2-D for a plain MLP).
        """
        children = dict(self.template.named_children())
        layout = [(n, children[n]) for n in self._layout_names]
        if per_model is None:
            flat = bool(layout) and isinstance(layout[0][1], nn.Flatten)
            per_model = (not flat) and x.dim() == 3
        if per_model and x.shape[0] != self.num_models:
            raise ValueError(f"a per-model input must have leading size {self.num_models}; got {tuple(x.shape)}.")
        layout, x = _strip_flatten(layout, x, per_model)
        return _stacked_mlp_forward(layout, self.stacked_parameters(), x)


# --------------------------------------------------------------------------------------------------
# posterior sample store
# --------------------------------------------------------------------------------------------------


_CPU_CHUNK_BYTES = 4 * 2**20
_DEVICE_CHUNK_BYTES = 512 * 2**20


class PosteriorSamples:
    """A store of posterior parameter samples with a predictive evaluated for all samples at once.

    Collects copies of a model's parameters along a chain, with a burn-in, thinning and a maximum
    count, on the model's device (or ``device``). The model's buffers (e.g. BatchNorm running
    statistics, which move with the weights during training) are stored with each sample too, and
    each sample predicts with its own: the store costs the buffers' size per sample in addition to
    the parameters'. :meth:`forward_all` evaluates every stored sample in
    one vectorised computation and :meth:`predictive` averages them into the Bayesian model average

    .. math:: p(y \\mid x, \\mathcal D) \\approx \\frac1S \\sum_{s=1}^S p(y \\mid x, \\theta^{(s)}).

    Two vectorised paths: for an ``nn.Sequential`` of Linear layers and elementwise activations a
    **fast path** (stacked weights; the S first-layer weights meet the shared input in one matrix
    product, later layers are ``baddbmm``), otherwise a **generic path**
    (``torch.func.functional_call`` + ``vmap``). Both run in chunks of samples to bound memory.
    Introduced in chapter 3; samples come from :class:`SGLD` (conventions page ``book/conventions.md``).

    Usage::

        store = PosteriorSamples(model, burn_in=1000, thin=100, max_samples=100)
        for t in range(num_steps):
            ...; opt.step()
            store.step()             # counts the step and keeps the sample if due
        probs = store.predictive(x_test)   # (n, K)

    Args:
        model: the network being sampled (its current parameters are copied on each kept step).
        burn_in: steps before the first kept sample.
        thin: keep every ``thin``-th step after the burn-in.
        max_samples: the most samples kept (``None``: no limit).
        when_full: ``"error"`` (default) raises once ``max_samples`` are stored and another is due;
            ``"drop_oldest"`` keeps the most recent ``max_samples`` (a sliding window).
        device: where the samples live (default: the model's device).

    Raises:
        ValueError: for negative ``burn_in``, ``thin < 1``, ``max_samples < 1``, an unknown
            ``when_full`` or a model without parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        burn_in: int = 0,
        thin: int = 1,
        max_samples: int | None = None,
        when_full: str = "error",
        device: torch.device | str | None = None,
    ):
        for name, value, low in (("burn_in", burn_in, 0), ("thin", thin, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1):
            raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}.")
        if when_full not in ("error", "drop_oldest"):
            raise ValueError(f"when_full must be 'error' or 'drop_oldest', got {when_full!r}.")
        self.model = model
        self.burn_in, self.thin, self.max_samples, self.when_full = burn_in, thin, max_samples, when_full
        first = next(model.parameters(), None)
        if first is None:
            raise ValueError("the model has no parameters to store.")
        self.device = torch.device(device) if device is not None else first.device
        self.template = copy.deepcopy(model).to(self.device).eval()
        for p in self.template.parameters():
            p.requires_grad_(False)
        self.names = [n for n, _ in model.named_parameters()]
        self.buffer_names = [n for n, _ in model.named_buffers()]
        # what every sample must hold: name -> (shape, dtype, "parameter" or "buffer"), fixed here
        self._specs: dict[str, tuple[torch.Size, torch.dtype, str]] = {
            **{n: (p.shape, p.dtype, "parameter") for n, p in model.named_parameters()},
            **{n: (b.shape, b.dtype, "buffer") for n, b in model.named_buffers()},
        }
        self._slots: dict[str, torch.Tensor] = {}  # name -> (capacity, ...) storage of parameters and buffers
        self._count = 0  # samples stored (<= capacity)
        self._start = 0  # ring-buffer start (drop_oldest)
        self.num_steps = 0  # steps counted by step()
        self.num_added = 0  # samples ever added
        # the fast path evaluates Linear layers and activations only, which hold no buffers
        self._layout = _mlp_layout(self.template) if not self.buffer_names else None

    def __len__(self) -> int:
        return self._count

    @classmethod
    def from_stacked(cls, model: nn.Module, samples: dict[str, torch.Tensor],
                     buffers: dict[str, torch.Tensor] | None = None,
                     device: torch.device | str | None = None) -> "PosteriorSamples":
        """A store holding the stacked samples ``{name: (S, ...)}`` of ``model``'s parameters (and
        ``buffers``, for a model that has some), e.g. :meth:`stacked` of another store, sliced, or
        ``bdk.distill.stack_samples`` of flat vectors.

        Raises:
            ValueError: as :meth:`load_state_dict` for samples that do not match the model.
        """
        store = cls(model, device=device)
        count = next(iter(samples.values())).shape[0] if samples else 0
        store.load_state_dict({"samples": samples, "buffers": buffers or {}, "num_steps": 0, "num_added": count})
        return store

    # -- collecting -------------------------------------------------------------------------------

    def _due(self, step: int) -> bool:
        return step > self.burn_in and (step - self.burn_in) % self.thin == 0

    def step(self) -> bool:
        """Count one sampler step; store the model's parameters if the step is due. Returns whether it stored."""
        self.num_steps += 1
        if self._due(self.num_steps):
            self.add()
            return True
        return False

    def _check_sample(self, values, where: str, leading: tuple[int, ...] = ()) -> None:
        """Raise unless ``values`` holds exactly the model's parameters and buffers, each of its shape and dtype.

        Args:
            values: ``{name: tensor}``.
            where: names the call in the message.
            leading: extra leading dimensions every tensor has (``(S,)`` for stacked samples).

        Raises:
            TypeError: ``values`` is not a dict of tensors.
            ValueError: a name is missing or unknown, a tensor has another shape (it would be broadcast
                into its slot silently) or a dtype the store cannot hold exactly (it would be rounded).
        """
        if not isinstance(values, dict):
            raise TypeError(f"{where}: give a dict {{name: tensor}}, got {type(values).__name__}.")
        missing = [n for n in self._specs if n not in values]
        if missing:
            buffers = [n for n in missing if self._specs[n][2] == "buffer"]
            hint = (
                f" The model has buffers ({buffers}, e.g. BatchNorm running statistics) that its predictions use; "
                "pass them too, e.g. {**dict(model.named_parameters()), **dict(model.named_buffers())}."
                if buffers else " Give every parameter of the model."
            )
            raise ValueError(f"{where}: the sample lacks {missing}.{hint}")
        unknown = [n for n in values if n not in self._specs]
        if unknown:
            raise ValueError(
                f"{where}: the sample has names the model does not: {unknown}. The model's parameters and "
                f"buffers are {list(self._specs)}."
            )
        for name, (shape, dtype, kind) in self._specs.items():
            value = values[name]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{where}: {name!r} must be a tensor, got {type(value).__name__}.")
            expected = (*leading, *shape)
            if tuple(value.shape) != expected:
                wanted = f"the {kind}'s shape {tuple(shape)}"
                if leading:
                    wanted = f"shape {expected} ({leading[0]} samples of {wanted})"
                raise ValueError(
                    f"{where}: {name!r} must have {wanted}, but has shape {tuple(value.shape)}; it would be "
                    "broadcast into its slot silently."
                )
            if torch.promote_types(value.dtype, dtype) != dtype:
                raise ValueError(
                    f"{where}: {name!r} has dtype {value.dtype}, but the store keeps the model's {kind} in {dtype} "
                    f"and would round it silently; convert it (.to({dtype})) or build the store from a model in "
                    f"{value.dtype}."
                )

    def _current(self) -> dict[str, torch.Tensor]:
        return {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}

    @torch.no_grad()
    def add(self, params: dict[str, torch.Tensor] | None = None) -> None:
        """Store one sample now: the model's current parameters and buffers, or ``params`` (``{name: tensor}``).

        Args:
            params: every parameter of the model by name (as ``model.named_parameters()``), and every
                buffer if it has any (as ``model.named_buffers()``); each of the model's shape and of a
                dtype the store holds exactly (the model's, or a narrower one of the same kind).

        Raises:
            ValueError: for a missing or unknown name, a tensor of another shape or a dtype that would be
                rounded (the message names it, and the expected and given shape or dtype), a
                parameter holding NaN or inf, or a full store with ``when_full="error"``. The store is
                then unchanged.
        """
        values = self._current() if params is None else params
        self._check_sample(values, "PosteriorSamples.add")
        bad = [n for n in self.names if not _all_finite([values[n].detach()])]
        if bad:
            raise ValueError(
                f"PosteriorSamples.add: the sample holds NaN or infinite values in {bad}: the chain has diverged "
                "(lower the step size) or the weights were corrupted. The store is unchanged."
            )
        if self.max_samples is not None and self._count >= self.max_samples:
            if self.when_full == "error":
                raise ValueError(
                    f"the store already holds max_samples={self.max_samples} samples; raise max_samples, "
                    "thin more, or pass when_full='drop_oldest' to keep the most recent ones."
                )
            slot = (self._start + self._count) % self.max_samples
            self._start = (self._start + 1) % self.max_samples
        else:
            self._grow(self._count + 1)
            slot = (self._start + self._count) % self._capacity()
            self._count += 1
        for n, slots in self._slots.items():
            slots[slot].copy_(values[n].detach())
        self.num_added += 1

    def _capacity(self) -> int:
        return next(iter(self._slots.values())).shape[0] if self._slots else 0

    def _grow(self, needed: int) -> None:
        cap = self._capacity()
        if needed <= cap:
            return
        new_cap = max(needed, 2 * cap, 8)
        if self.max_samples is not None:
            new_cap = min(new_cap, self.max_samples)
        order = self._order()
        for n, (shape, dtype, _) in self._specs.items():
            slots = torch.empty((new_cap, *shape), dtype=dtype, device=self.device)
            if cap:
                slots[: self._count] = self._slots[n][order]
            self._slots[n] = slots
        self._start = 0

    def _order(self) -> torch.Tensor | slice:
        cap = self._capacity()
        if self._start == 0 or cap == 0:
            return slice(0, self._count)
        return (torch.arange(self._count, device=self.device) + self._start) % cap

    def stacked(self) -> dict[str, torch.Tensor]:
        """``{name: (S, ...)}``, the stored samples' parameters in the order they were taken."""
        return self._stacked(self.names)

    def stacked_buffers(self) -> dict[str, torch.Tensor]:
        """``{name: (S, ...)}``, the stored samples' buffers (empty for a model without buffers)."""
        return self._stacked(self.buffer_names)

    def _stacked(self, names: list[str]) -> dict[str, torch.Tensor]:
        if self._count == 0:
            raise ValueError("the store is empty: run the sampler past the burn-in (or call add()).")
        order = self._order()
        return {n: self._slots[n][order] for n in names}

    # -- predicting -------------------------------------------------------------------------------

    def _chunk_size(self, x: torch.Tensor, chunk_size: int | None) -> int:
        if chunk_size is not None:
            if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
                raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
            return chunk_size
        widths = [m.out_features for _, m in self._layout if isinstance(m, nn.Linear)] if self._layout else [1024]
        per_sample = x.shape[0] * max(widths) * x.element_size()  # the widest activation of one sample
        # On a CPU the matrix products of a large network already run at full speed one sample at a
        # time; what batching changes is memory traffic, so keep a chunk's activations cache-sized
        # (a few MB). Elsewhere (GPUs) bound memory instead.
        budget = _CPU_CHUNK_BYTES if self.device.type == "cpu" else _DEVICE_CHUNK_BYTES
        return max(1, min(self._count, budget // max(per_sample, 1)))

    def _chunks(self, x: torch.Tensor, chunk_size: int | None, method: str):
        if method not in ("auto", "fast", "vmap", "loop"):
            raise ValueError(f"method must be 'auto', 'fast', 'vmap' or 'loop', got {method!r}.")
        if method == "fast" and self._layout is None:
            raise ValueError("method='fast' needs an nn.Sequential of Linear layers and elementwise activations.")
        if method == "auto":
            method = "fast" if self._layout is not None else "vmap"
        stacked, stacked_buffers = self.stacked(), self.stacked_buffers()
        x = x.to(self.device)
        size = self._chunk_size(x, chunk_size)
        layout = self._layout
        if method == "fast":
            layout, x = _strip_flatten(layout, x, per_model=False)

        def f(p, b, inp):  # one sample: its parameters and its buffers
            return torch.func.functional_call(self.template, (p, b), (inp,))

        for start in range(0, self._count, size):
            part = {n: v[start : start + size] for n, v in stacked.items()}
            buffers = {n: v[start : start + size] for n, v in stacked_buffers.items()}
            if method == "fast":
                yield _stacked_mlp_forward(layout, part, x)
            elif method == "vmap":
                yield torch.func.vmap(f, in_dims=(0, 0, None))(part, buffers, x)
            else:
                num = next(iter(part.values())).shape[0]
                outs = [f({n: v[s] for n, v in part.items()}, {n: v[s] for n, v in buffers.items()}, x) for s in range(num)]
                yield torch.stack(outs)

    @torch.no_grad()
    def forward_all(self, x: torch.Tensor, chunk_size: int | None = None, method: str = "auto") -> torch.Tensor:
        """The raw outputs (logits or predictions) of every stored sample, ``(S, n, ...)``.

        Args:
            x: inputs ``(n, ...)``.
            chunk_size: samples per vectorised call (default: on a CPU as many as keep the widest
                activation within ~4 MB, i.e. in cache; elsewhere within ~512 MB).
            method: ``"auto"`` (fast path when the model allows, else vmap), ``"fast"``, ``"vmap"``, or
                ``"loop"`` (a Python loop over samples, for checks and benchmarks).
        """
        parts = list(self._chunks(x, chunk_size, method))
        return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts)

    @torch.no_grad()
    def predictive(
        self,
        x: torch.Tensor,
        likelihood: str = "classification",
        noise_precision: float | None = None,
        chunk_size: int | None = None,
        method: str = "auto",
    ):
        """The posterior predictive averaged over the stored samples.

        Classification: :math:`\\frac1S\\sum_s \\operatorname{softmax}(f_{\\theta^{(s)}}(x))`, ``(n, K)``.
        Regression: the predictive mean :math:`\\frac1S\\sum_s f_{\\theta^{(s)}}(x)` and variance
        (the variance of the :math:`f_{\\theta^{(s)}}(x)` plus :math:`1/\\tau` if ``noise_precision`` is given).

        Returns:
            ``probs (n, K)`` for classification; ``(mean (n,), variance (n,))`` for regression.
        """
        if likelihood == "classification":
            total = None
            for out in self._chunks(x, chunk_size, method):
                p = torch.softmax(out, dim=-1).sum(0)
                total = p if total is None else total + p
            return total / self._count
        if likelihood == "regression":
            if noise_precision is not None and not (_is_number(noise_precision) and noise_precision > 0):
                raise ValueError(f"noise_precision must be positive or None, got {noise_precision!r}.")
            s1 = s2 = None
            for out in self._chunks(x, chunk_size, method):
                out = out.reshape(out.shape[0], out.shape[1])
                a, b = out.sum(0), out.double().pow(2).sum(0)
                s1 = a if s1 is None else s1 + a
                s2 = b if s2 is None else s2 + b
            mean = s1 / self._count
            var = (s2 / self._count - mean.double() ** 2).clamp_min(0).to(mean.dtype)
            if noise_precision is not None:
                var = var + 1.0 / noise_precision
            return mean, var
        raise ValueError(f"likelihood must be 'classification' or 'regression', got {likelihood!r}.")

    # -- checkpointing ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to resume collecting: the samples (parameters and buffers) and the counters."""
        return {
            "samples": self.stacked() if self._count else {},
            "buffers": self.stacked_buffers() if self._count else {},
            "num_steps": self.num_steps,
            "num_added": self.num_added,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: if the saved samples do not match the model (a missing or unknown name, another
                shape or a dtype that would be rounded), including a state saved without the buffers
                of a model that has some. The store is then unchanged.
        """
        values = {**state["samples"], **state.get("buffers", {})}
        s = next(iter(values.values())).shape[0] if values else 0
        if s:
            self._check_sample(values, "PosteriorSamples.load_state_dict", leading=(s,))
        self._slots, self._count, self._start = {}, 0, 0
        if s:
            self._grow(s)
            for n, slots in self._slots.items():
                slots[:s] = values[n].to(self.device)
            self._count = s
        self.num_steps = state["num_steps"]
        self.num_added = state["num_added"]


# --------------------------------------------------------------------------------------------------
# diagnostics
# --------------------------------------------------------------------------------------------------


def convergence_diagnostics(samples, names: Sequence[str] | None = None) -> dict:
    """Effective sample size (bulk and tail) and rank-normalised split R-hat, computed by ``arviz``.

    R-hat compares the variance between chains with the variance within them
    :cite:p:`gelman1992rhat`; we use the rank-normalised split version and the bulk/tail ESS of
    :cite:t:`vehtari2021rhat` as implemented in ArviZ :cite:p:`kumar2019arviz`. R-hat near 1 (below
    1.01) and an ESS of a few hundred per quantity are the usual bars. Introduced in chapter 3.

    Args:
        samples: array-like ``(num_chains, num_draws)`` or ``(num_chains, num_draws, dim)``.
        names: optional names of the ``dim`` coordinates.

    Returns:
        ``{"ess_bulk": (dim,), "ess_tail": (dim,), "r_hat": (dim,), "num_chains", "num_draws", "names"}``
        (NumPy arrays).

    Raises:
        ImportError: if ``arviz`` is not installed (``pip install arviz``, or ``pip install bdk[diagnostics]``).
        ValueError: for a wrong shape.
    """
    try:  # arviz is an optional dependency (bdk[diagnostics]), imported when first needed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import arviz as az  # optional: the diagnostics extra
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "convergence_diagnostics needs the optional dependency arviz: `pip install arviz` "
            "(or `pip install bdk[diagnostics]`)."
        ) from err
    arr = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"samples must have shape (num_chains, num_draws[, dim]); got {arr.shape}.")
    if arr.shape[1] < 4:
        raise ValueError(f"need at least 4 draws per chain for split R-hat, got {arr.shape[1]}.")
    arr = arr.astype(np.float64)
    dataset = az.convert_to_dataset({"theta": arr})
    ess_bulk = az.ess(dataset, method="bulk")["theta"].values
    ess_tail = az.ess(dataset, method="tail")["theta"].values
    r_hat = az.rhat(dataset)["theta"].values
    dim = arr.shape[2]
    return {
        "ess_bulk": np.asarray(ess_bulk).reshape(dim),
        "ess_tail": np.asarray(ess_tail).reshape(dim),
        "r_hat": np.asarray(r_hat).reshape(dim),
        "num_chains": arr.shape[0],
        "num_draws": arr.shape[1],
        "names": list(names) if names is not None else [f"theta[{i}]" for i in range(dim)],
    }

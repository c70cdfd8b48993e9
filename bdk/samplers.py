"""Stochastic gradient Langevin dynamics and friends (chapter 3, "Stochastic gradient Langevin dynamics").

All samplers here follow the book's one scaling convention (see the conventions page,
``book/conventions.md``, "The one scaling convention"): the potential is the negative log posterior
over the whole data set,

.. math:: U(\\theta) = -\\log p(\\theta) - \\sum_{i=1}^N \\log p(y_i \\mid x_i, \\theta),

a minibatch of size :math:`n` estimates it without bias by scaling the likelihood sum by :math:`N/n`
(:func:`neg_log_posterior` does this), and SGLD steps
:math:`\\theta \\leftarrow \\theta - \\tfrac{\\mathrm{lr}}{2} \\nabla \\hat U + \\sqrt{\\mathrm{lr}\\,T}\\,\\xi`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SGLD", "neg_log_posterior"]


def _check_finite_grads(params, step: int, name: str) -> None:
    for p in params:
        if p.grad is not None and not torch.isfinite(p.grad).all():
            raise FloatingPointError(
                f"{name} step {step}: a gradient is NaN or infinite (parameter of shape {tuple(p.grad.shape)}). "
                "Lower the learning rate, check the data for NaNs, or check the loss."
            )


def neg_log_posterior(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_data: int,
    prior_precision: float,
    likelihood: str = "classification",
    noise_precision: float | None = None,
) -> torch.Tensor:
    """Unbiased minibatch estimate of the full-data negative log posterior :math:`\\hat U(\\theta)`.

    .. math::
        \\hat U(\\theta) = \\frac{\\lambda}{2}\\lVert\\theta\\rVert^2
        - \\frac{N}{n}\\sum_{i \\in \\text{batch}} \\log p(y_i \\mid x_i, \\theta)

    with a Gaussian prior :math:`\\mathcal N(0, \\lambda^{-1} I)` (constants dropped). Classification uses
    the softmax likelihood on the model's logits; regression a Gaussian
    :math:`\\mathcal N(y \\mid f(x), \\tau^{-1})` with noise precision :math:`\\tau`. Introduced in chapter 3;
    the scaling is the book's one convention (conventions page).

    Args:
        model: maps ``x`` to logits ``(n, K)`` (classification) or predictions ``(n,)``/``(n, 1)`` (regression).
        x: a minibatch of inputs, ``(n, ...)``.
        y: labels ``(n,)`` (int64) or targets ``(n,)`` (float).
        num_data: :math:`N`, the size of the whole training set.
        prior_precision: :math:`\\lambda \\ge 0`.
        likelihood: ``"classification"`` or ``"regression"``.
        noise_precision: :math:`\\tau > 0`, required for regression.

    Returns:
        A scalar tensor :math:`\\hat U` (call ``backward()`` on it).

    Raises:
        ValueError: on inconsistent sizes, a non-positive ``num_data``, a negative prior precision,
            an unknown likelihood, or a missing/non-positive noise precision.
    """
    n = x.shape[0]
    if n == 0 or y.shape[0] != n:
        raise ValueError(f"x and y must hold the same non-zero number of examples, got {x.shape[0]} and {y.shape[0]}.")
    if num_data < n:
        raise ValueError(f"num_data ({num_data}) is the size of the whole training set and cannot be below the batch size {n}.")
    if prior_precision < 0:
        raise ValueError(f"prior_precision must be >= 0, got {prior_precision}.")
    out = model(x)
    if likelihood == "classification":
        log_lik = -F.cross_entropy(out, y, reduction="sum")
    elif likelihood == "regression":
        if noise_precision is None or noise_precision <= 0:
            raise ValueError("regression needs a positive noise_precision (the inverse noise variance).")
        pred = out.reshape(n) if out.dim() > 1 and out.shape[-1] == 1 else out
        if pred.shape != y.shape:
            raise ValueError(f"regression predictions have shape {tuple(pred.shape)} but targets {tuple(y.shape)}.")
        log_lik = -0.5 * noise_precision * (pred - y).pow(2).sum() + 0.5 * n * math.log(noise_precision / (2 * math.pi))
    else:
        raise ValueError(f"likelihood must be 'classification' or 'regression', got {likelihood!r}.")
    prior = 0.5 * prior_precision * sum(p.pow(2).sum() for p in model.parameters())
    return prior - (num_data / n) * log_lik


class SGLD(torch.optim.Optimizer):
    """Stochastic gradient Langevin dynamics :cite:p:`welling2011sgld`.

    .. math::
        \\theta \\leftarrow \\theta - \\frac{\\mathrm{lr}}{2}\\,\\nabla_\\theta \\hat U(\\theta)
        + \\sqrt{\\mathrm{lr}\\cdot T}\\;\\xi, \\qquad \\xi \\sim \\mathcal N(0, I),

    where :math:`\\hat U` is an unbiased minibatch estimate of the full-data negative log posterior
    (likelihood sum scaled by :math:`N/n`; see :func:`neg_log_posterior` and the conventions page).
    With ``temperature=1`` the stationary distribution (as ``lr -> 0``) is the posterior
    :math:`\\propto e^{-U}`; ``temperature=0`` is gradient descent on :math:`U` with rate ``lr/2``.
    Welling & Teh's :math:`\\epsilon_t` is ``lr``. Step-size schedules
    :math:`a(b+t)^{-\\gamma}` are ordinary learning-rate schedulers. Introduced in chapter 3.

    Args:
        params: parameters or parameter groups.
        lr: the step size :math:`\\epsilon > 0`.
        temperature: :math:`T \\ge 0`.
        generator: optional ``torch.Generator`` for the injected noise (on the parameters' device).

    Raises:
        ValueError: for a non-positive ``lr`` or a negative ``temperature``.
        FloatingPointError: from :meth:`step` when a gradient is not finite (names the step).
    """

    def __init__(self, params, lr: float, temperature: float = 1.0, generator: torch.Generator | None = None):
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}.")
        if not (isinstance(temperature, (int, float)) and temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}.")
        super().__init__(params, dict(lr=lr, temperature=temperature))
        self.generator = generator
        self.num_steps = 0

    @torch.no_grad()
    def step(self, closure=None):
        """Take one SGLD step using the gradients in ``p.grad`` (of :math:`\\hat U`)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.num_steps += 1
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            _check_finite_grads(params, self.num_steps, "SGLD")
            lr, temperature = group["lr"], group["temperature"]
            grads = [p.grad for p in params]
            torch._foreach_add_(params, grads, alpha=-0.5 * lr)
            if temperature > 0:
                scale = math.sqrt(lr * temperature)
                noise = [torch.randn(p.shape, device=p.device, dtype=p.dtype, generator=self.generator) for p in params]
                torch._foreach_add_(params, noise, alpha=scale)
        return loss

    def state_dict(self):
        state = super().state_dict()
        state["num_steps"] = self.num_steps
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        self.num_steps = state_dict.pop("num_steps", 0)
        super().load_state_dict(state_dict)

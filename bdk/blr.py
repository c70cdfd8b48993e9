r"""The Bayesian learning rule for Gaussian candidates (chapter 4, "The Bayesian learning rule").

The Bayesian learning rule (BLR) of :cite:`khan2023blr` fits a candidate distribution :math:`q` from an
exponential family by natural-gradient descent on the variational objective

.. math:: \mathcal L(q) = \mathbb E_q[\ell(\theta)] - \mathcal H(q),

where :math:`\ell` is the loss. In ``bdk`` the loss is the potential of the book's one scaling
convention (``book/conventions.md``, "The one scaling convention"),
:math:`\ell(\theta) = U(\theta) = -\log p(\theta) - \sum_{i=1}^N \log p(y_i \mid x_i, \theta)`, so that
the minimiser of :math:`\mathcal L` over all distributions is the posterior :math:`e^{-U}/Z`. In the
natural parameters :math:`\lambda` and expectation parameters :math:`\mu` of :math:`q` the rule reads

.. math:: \lambda \leftarrow (1 - \rho)\,\lambda - \rho\, \nabla_\mu \mathbb E_q[\ell(\theta)].

For a Gaussian :math:`q = \mathcal N(m, S^{-1})` this is the mean/precision update

.. math::
    S \leftarrow (1 - \rho)\, S + \rho\, \mathbb E_q[\nabla^2 \ell(\theta)], \qquad
    m \leftarrow m - \rho\, S^{-1} \mathbb E_q[\nabla \ell(\theta)]

(with the new :math:`S`), implemented by :func:`blr_step`. Approximating the expectations gives classical
algorithms: the delta method with a fixed precision is gradient descent, the delta method with
:math:`\rho = 1` is Newton's method, a diagonal precision with squared gradients is an RMSprop/Adam-like
method (:func:`adaptive_blr_step`), and Monte Carlo expectations give variational online Newton (VON,
:func:`von_step`, and the optimizer :class:`VON` for an ``nn.Module``) :cite:`khan2018vadam`.

Public names: :class:`GaussianBLR`, :func:`expected_grad_hess`, :func:`blr_step`, :func:`von_step`,
:func:`run_blr`, :class:`AdaptiveState`, :func:`adaptive_blr_step`, :func:`laplace_approximation`,
:func:`gaussian_vi_optimum`, :func:`grad_hess_from_loss`, :class:`LogisticRegressionPotential`,
:class:`LinearRegressionPotential`, :class:`VON`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, Iterator

import numpy as np
import torch

from .cache import progress
from .langevin import Potential

__all__ = [
    "GaussianBLR",
    "expected_grad_hess",
    "blr_step",
    "von_step",
    "run_blr",
    "AdaptiveState",
    "adaptive_blr_step",
    "laplace_approximation",
    "gaussian_vi_optimum",
    "grad_hess_from_loss",
    "LogisticRegressionPotential",
    "LinearRegressionPotential",
    "VON",
]

GradFn = Callable[[torch.Tensor], torch.Tensor]

_METHODS = ("delta", "mc", "quadrature")


# --------------------------------------------------------------------------------------------------
# The Gaussian candidate
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GaussianBLR:
    r"""A Gaussian candidate :math:`q = \mathcal N(m, S^{-1})`, the state of the Gaussian BLR (chapter 4).

    The precision :math:`S` is either a full symmetric positive-definite matrix of shape ``(d, d)`` or
    the diagonal of a diagonal one, shape ``(d,)``. Its natural parameters are
    :math:`\lambda = (S m, -\tfrac12 S)` and its expectation parameters
    :math:`\mu = (m, S^{-1} + m m^\top)` :cite:`khan2023blr`. The state is immutable: every update
    returns a new one.

    Args:
        mean: :math:`m`, shape ``(d,)``, floating point.
        precision: :math:`S`, shape ``(d, d)`` (full) or ``(d,)`` (diagonal), same dtype and device.

    Raises:
        TypeError: if the tensors are not floating point or their dtypes/devices differ.
        ValueError: if the shapes do not match, or the precision is not symmetric positive definite
            (full) or not positive (diagonal), or anything is not finite.
    """

    mean: torch.Tensor
    precision: torch.Tensor

    def __post_init__(self):
        m, s = self.mean, self.precision
        if not isinstance(m, torch.Tensor) or not isinstance(s, torch.Tensor):
            raise TypeError("mean and precision must be torch tensors.")
        if not m.is_floating_point() or not s.is_floating_point():
            raise TypeError(f"mean and precision must be floating point, got {m.dtype} and {s.dtype}.")
        if m.dtype != s.dtype or m.device != s.device:
            raise TypeError(
                f"mean and precision must share dtype and device, got {m.dtype}/{m.device} and {s.dtype}/{s.device}."
            )
        if m.ndim != 1 or m.numel() == 0:
            raise ValueError(f"mean must be a non-empty vector of shape (d,), got shape {tuple(m.shape)}.")
        d = m.shape[0]
        if s.shape not in ((d,), (d, d)):
            raise ValueError(
                f"precision must have shape ({d},) (diagonal) or ({d}, {d}) (full) to match the mean, "
                f"got {tuple(s.shape)}."
            )
        if not torch.isfinite(m).all() or not torch.isfinite(s).all():
            raise ValueError("mean and precision must be finite.")
        if s.ndim == 1:
            if not (s > 0).all():
                raise ValueError(f"a diagonal precision must be positive, got minimum {s.min().item():.3g}.")
        else:
            if not torch.allclose(s, s.T, rtol=1e-6, atol=1e-10 * max(1.0, s.abs().max().item())):
                raise ValueError("a full precision must be symmetric; pass (S + S.T) / 2.")
            _, info = torch.linalg.cholesky_ex(s)
            if info.item() != 0:
                raise ValueError("a full precision must be positive definite (its Cholesky factorisation failed).")

    @classmethod
    def _unchecked(cls, mean: torch.Tensor, precision: torch.Tensor) -> "GaussianBLR":
        # for internal updates whose result was already checked (finite, positive definite)
        obj = object.__new__(cls)
        object.__setattr__(obj, "mean", mean)
        object.__setattr__(obj, "precision", precision)
        return obj

    # ---- basic properties -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """The dimension :math:`d`."""
        return self.mean.shape[0]

    @property
    def is_diagonal(self) -> bool:
        """Whether the precision is stored as a diagonal ``(d,)``."""
        return self.precision.ndim == 1

    def precision_matrix(self) -> torch.Tensor:
        """The precision as a ``(d, d)`` matrix (also for a diagonal state)."""
        return torch.diag(self.precision) if self.is_diagonal else self.precision

    def covariance(self) -> torch.Tensor:
        """The covariance :math:`S^{-1}` as a ``(d, d)`` matrix."""
        if self.is_diagonal:
            return torch.diag(1.0 / self.precision)
        inv = torch.cholesky_inverse(torch.linalg.cholesky(self.precision))
        return 0.5 * (inv + inv.T)

    def to(self, device=None, dtype=None) -> "GaussianBLR":
        """A copy on another device and/or dtype."""
        return GaussianBLR(self.mean.to(device=device, dtype=dtype), self.precision.to(device=device, dtype=dtype))

    # ---- exponential-family parameters ----------------------------------------------------------
    def natural_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The natural parameters :math:`(\lambda^{(1)}, \lambda^{(2)}) = (S m, -\tfrac12 S)`.

        For a diagonal state the second one is the diagonal ``(d,)``.
        """
        if self.is_diagonal:
            return self.precision * self.mean, -0.5 * self.precision
        return self.precision @ self.mean, -0.5 * self.precision

    def expectation_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The expectation parameters :math:`(\mu^{(1)}, \mu^{(2)}) = (\mathbb E\theta, \mathbb E\theta\theta^\top) = (m, S^{-1} + m m^\top)`.

        For a diagonal state the second one is the diagonal :math:`1/s + m^2`.
        """
        if self.is_diagonal:
            return self.mean, 1.0 / self.precision + self.mean**2
        return self.mean, self.covariance() + torch.outer(self.mean, self.mean)

    @classmethod
    def from_natural(cls, eta1: torch.Tensor, eta2: torch.Tensor) -> "GaussianBLR":
        r"""Build the state from natural parameters :math:`(S m, -\tfrac12 S)` (``eta2`` full or diagonal)."""
        precision = -2.0 * eta2
        if precision.ndim == 1:
            return cls(eta1 / precision, precision)
        precision = 0.5 * (precision + precision.T)
        return cls(torch.cholesky_solve(eta1[:, None], torch.linalg.cholesky(precision))[:, 0], precision)

    # ---- densities and samples ------------------------------------------------------------------
    def _cholesky(self) -> torch.Tensor:
        return torch.linalg.cholesky(self.precision)

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        r"""Map standard normal draws ``z`` of shape ``(k, d)`` to :math:`\theta = m + L^{-\top} z`, :math:`S = L L^\top`."""
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must have shape (k, {self.dim}), got {tuple(z.shape)}.")
        if self.is_diagonal:
            return self.mean + z / self.precision.sqrt()
        chol = self._cholesky()
        return self.mean + torch.linalg.solve_triangular(chol.T, z.T, upper=True).T

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Draw ``num_samples`` samples :math:`\theta = m + L^{-\top}\varepsilon`, :math:`\varepsilon \sim \mathcal N(0, I)`.

        Args:
            num_samples: a positive integer.
            generator: an optional ``torch.Generator`` on the state's device (reproducible draws).

        Returns:
            A tensor of shape ``(num_samples, d)``.
        """
        _check_positive_int(num_samples, "num_samples")
        z = torch.randn(
            (num_samples, self.dim), generator=generator, dtype=self.mean.dtype, device=self.mean.device
        )
        return self.transform(z)

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """The log density at ``theta`` of shape ``(..., d)``; returns shape ``(...)``."""
        diff = theta - self.mean
        if self.is_diagonal:
            quad = (diff**2 * self.precision).sum(-1)
            logdet = self.precision.log().sum()
        else:
            chol = self._cholesky()
            quad = ((diff @ chol) ** 2).sum(-1)  # (θ-m)ᵀ L Lᵀ (θ-m)
            logdet = 2.0 * chol.diagonal().log().sum()
        return -0.5 * quad + 0.5 * logdet - 0.5 * self.dim * math.log(2 * math.pi)

    def entropy(self) -> torch.Tensor:
        r"""The entropy :math:`\tfrac d2 (1 + \log 2\pi) - \tfrac12 \log\det S`."""
        logdet = self.precision.log().sum() if self.is_diagonal else 2.0 * self._cholesky().diagonal().log().sum()
        return 0.5 * self.dim * (1.0 + math.log(2 * math.pi)) - 0.5 * logdet


# --------------------------------------------------------------------------------------------------
# Expectations of the gradient and Hessian under q
# --------------------------------------------------------------------------------------------------


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_prior_precision(prior_precision):
    if isinstance(prior_precision, bool) or not isinstance(prior_precision, (int, float)) or not (
        math.isfinite(prior_precision) and prior_precision >= 0
    ):
        raise ValueError(f"prior_precision must be a non-negative finite number, got {prior_precision!r}.")


def _check_rate(lr, name="lr"):
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {lr!r}.")


def _hermite_rule(num_points: int, dim: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-product Gauss-Hermite nodes ``(num_points**dim, dim)`` and weights (sum 1) for N(0, I)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_points)  # weight exp(-x^2/2)
    weights = weights / weights.sum()
    grids = np.meshgrid(*([nodes] * dim), indexing="ij")
    z = np.stack([g.ravel() for g in grids], axis=1)
    wgrids = np.meshgrid(*([weights] * dim), indexing="ij")
    w = np.prod(np.stack([g.ravel() for g in wgrids], axis=1), axis=1)
    return torch.as_tensor(z, dtype=dtype, device=device), torch.as_tensor(w, dtype=dtype, device=device)


def _call(fn: GradFn, theta: torch.Tensor, name: str, shapes: tuple) -> torch.Tensor:
    out = fn(theta)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must return a tensor, got {type(out).__name__}.")
    if tuple(out.shape) not in shapes:
        raise ValueError(
            f"{name} maps parameters of shape (k, d) = {tuple(theta.shape)} to one of the shapes "
            f"{' or '.join(str(s) for s in shapes)}, but returned {tuple(out.shape)}."
        )
    if not torch.isfinite(out).all():
        raise FloatingPointError(f"{name} returned a NaN or infinite value; lower the learning rate or check the loss.")
    return out


def expected_grad_hess(
    state: GaussianBLR,
    grad_fn: GradFn,
    hess_fn: GradFn | str | None = None,
    *,
    method: str = "delta",
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    quadrature_points: int = 20,
    prior_precision: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Estimate :math:`\mathbb E_q[\nabla\ell]` and :math:`\mathbb E_q[\nabla^2\ell]` under :math:`q = \mathcal N(m, S^{-1})` (chapter 4).

    * ``"delta"``: the delta method, :math:`\mathbb E_q[f(\theta)] \approx f(m)`.
    * ``"mc"``: Monte Carlo with ``num_samples`` draws :math:`\theta_k = m + L^{-\top}\varepsilon_k`
      (the same draws for the gradient and the Hessian), as in VON :cite:`khan2018vadam`.
    * ``"quadrature"``: tensor-product Gauss-Hermite quadrature with ``quadrature_points`` nodes per
      dimension (``quadrature_points ** d`` evaluations; for small ``d``), nearly exact for smooth losses.

    With ``hess_fn="reparam"`` (only with ``method="mc"``) no second derivatives are needed: the
    expected Hessian is estimated from the same gradients by Stein's lemma,
    :math:`\mathbb E_q[\nabla^2\ell] = \mathbb E_q[S(\theta - m)\nabla\ell(\theta)^\top]`, i.e.
    :math:`\frac1K\sum_k S(\theta_k - m)\nabla\ell(\theta_k)^\top` (symmetrised; for a diagonal
    state its diagonal :math:`s \circ (\theta_k - m) \circ \nabla\ell(\theta_k)`), the estimator of the
    :class:`VON` optimizer and of IVON :cite:`shen2024ivon`. It is unbiased but can be indefinite.

    A Gaussian prior term :math:`\tfrac{\lambda}{2}\lVert\theta\rVert^2` of the loss can be left out
    of ``grad_fn``/``hess_fn`` and passed as ``prior_precision``: its expectations
    :math:`\mathbb E_q[\lambda\theta] = \lambda m` and :math:`\lambda I` are then added in closed form
    (no Monte Carlo noise), as in the VON of :cite:`khan2018vadam`.

    Args:
        state: the current :class:`GaussianBLR`.
        grad_fn: maps parameters ``(k, d)`` to gradients of the loss ``(k, d)``.
        hess_fn: maps ``(k, d)`` to Hessians ``(k, d, d)``, or to their diagonals ``(k, d)`` (only for
            a diagonal state); ``"reparam"`` for the gradient-only estimate above; ``None`` skips the Hessian.
        method: ``"delta"``, ``"mc"`` or ``"quadrature"``.
        num_samples: Monte Carlo draws (``method="mc"``).
        generator: ``torch.Generator`` for the draws (``method="mc"``).
        quadrature_points: nodes per dimension (``method="quadrature"``).
        prior_precision: :math:`\lambda \ge 0` of a prior term handled in closed form (0: none).

    Returns:
        ``(grad, hess)``: shapes ``(d,)`` and ``(d, d)`` (full state) or ``(d,)`` (diagonal state, the
        diagonal of the expected Hessian); ``hess`` is ``None`` when ``hess_fn`` is ``None``.

    Raises:
        ValueError: on an unknown method, a bad sample count or wrongly shaped outputs.
        FloatingPointError: if a gradient or Hessian is not finite.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
    _check_prior_precision(prior_precision)
    d = state.dim
    if method == "delta":
        theta = state.mean[None]
        weights = None
    elif method == "mc":
        _check_positive_int(num_samples, "num_samples")
        theta = state.sample(num_samples, generator=generator)
        weights = None
    else:
        _check_positive_int(quadrature_points, "quadrature_points")
        if quadrature_points**d > 2_000_000:
            raise ValueError(
                f"quadrature with {quadrature_points} points in {d} dimensions needs {quadrature_points}**{d} "
                "evaluations; use method='mc' for more than a few dimensions."
            )
        z, weights = _hermite_rule(quadrature_points, d, state.mean.dtype, state.mean.device)
        theta = state.transform(z)
    k = theta.shape[0]

    def average(values):
        if weights is None:
            return values.mean(0)
        return torch.tensordot(weights, values, dims=1)

    if isinstance(hess_fn, str) and (hess_fn != "reparam" or method != "mc"):
        raise ValueError(
            f"hess_fn must be a function, None, or 'reparam' (with method='mc'); got {hess_fn!r} with method={method!r}."
        )
    grads = _call(grad_fn, theta, "grad_fn", ((k, d),))
    grad = average(grads)
    if prior_precision:
        grad = grad + prior_precision * state.mean
    if hess_fn is None:
        return grad, None
    return grad, _symmetric_plus_prior(average(_hessians_at(state, theta, grads, hess_fn)), prior_precision)


def _hessians_at(state: GaussianBLR, theta: torch.Tensor, grads: torch.Tensor, hess_fn: GradFn | str) -> torch.Tensor:
    r"""The Hessians at the draws ``theta`` ``(k, d)``: ``hess_fn``'s, or Stein's :math:`S(\theta_k - m)\nabla\ell(\theta_k)^\top`.

    Shape ``(k, d, d)``, or ``(k, d)`` (their diagonals) for a diagonal state.
    """
    k, d = theta.shape
    if isinstance(hess_fn, str):  # Stein's lemma: E_q[hess] = E_q[S (theta - m) grad^T]
        diff = theta - state.mean
        if state.is_diagonal:
            return state.precision * diff * grads
        scaled = diff @ state.precision  # rows: (S (theta_k - m))^T, S symmetric
        return scaled[:, :, None] * grads[:, None, :]
    shapes = ((k, d, d), (k, d)) if state.is_diagonal else ((k, d, d),)
    hess_values = _call(hess_fn, theta, "hess_fn", shapes)
    if state.is_diagonal and hess_values.ndim == 3:
        hess_values = torch.diagonal(hess_values, dim1=1, dim2=2)
    return hess_values


def _symmetric_plus_prior(hess: torch.Tensor, prior_precision: float) -> torch.Tensor:
    r"""An averaged Hessian (full: symmetrised) plus the prior's :math:`\lambda I` (diagonal: :math:`\lambda`)."""
    if hess.ndim == 2:
        hess = 0.5 * (hess + hess.T)
    if prior_precision:
        if hess.ndim == 2:
            hess = hess + prior_precision * torch.eye(hess.shape[0], dtype=hess.dtype, device=hess.device)
        else:
            hess = hess + prior_precision
    return hess


# --------------------------------------------------------------------------------------------------
# The BLR step and its named special cases
# --------------------------------------------------------------------------------------------------


def blr_step(
    state: GaussianBLR,
    grad_fn: GradFn,
    hess_fn: GradFn | str | None = None,
    *,
    lr: float,
    method: str = "delta",
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    update_precision: bool = True,
    quadrature_points: int = 20,
    prior_precision: float = 0.0,
) -> GaussianBLR:
    r"""One step of the Gaussian Bayesian learning rule (chapter 4).

    Natural-gradient descent with rate :math:`\rho` on :math:`\mathbb E_q[\ell] - \mathcal H(q)`
    for :math:`q = \mathcal N(m, S^{-1})` :cite:`khan2023blr`:

    .. math::
        S' = (1 - \rho)\, S + \rho\, \mathbb E_q[\nabla^2 \ell(\theta)], \qquad
        m' = m - \rho\, S'^{-1}\, \mathbb E_q[\nabla \ell(\theta)].

    With ``update_precision=False`` the precision is held fixed (:math:`S' = S`), the family is
    :math:`\mathcal N(m, S^{-1})` with known :math:`S`, the entropy does not depend on :math:`m`, and
    the rule is the preconditioned gradient step :math:`m' = m - \rho S^{-1}\mathbb E_q[\nabla\ell]`:
    with the delta method and :math:`S = I` it is gradient descent with learning rate :math:`\rho`.
    With the delta method, a full precision and :math:`\rho = 1` it is Newton's method. With
    ``method="mc"`` it is variational online Newton (:func:`von_step`).

    A diagonal state uses the diagonal of the expected Hessian (a diagonal Gaussian candidate).

    Args:
        state: the current :class:`GaussianBLR`.
        grad_fn: maps ``(k, d)`` parameters to loss gradients ``(k, d)``; the loss is the potential
            :math:`U` of the book's scaling convention (summed over the data).
        hess_fn: maps ``(k, d)`` to Hessians ``(k, d, d)`` (or diagonals ``(k, d)`` for a diagonal
            state), or ``"reparam"`` (``method="mc"``; see :func:`expected_grad_hess`); required when
            ``update_precision`` is true.
        lr: the rate :math:`\rho > 0`; at most 1 when the precision is updated (then :math:`S'` is a
            convex combination and stays positive definite for a convex loss).
        method: how expectations under :math:`q` are computed, see :func:`expected_grad_hess`.
        num_samples: Monte Carlo draws per step (``method="mc"``).
        generator: ``torch.Generator`` for the draws.
        update_precision: whether to update :math:`S` (``False``: fixed precision).
        quadrature_points: Gauss-Hermite nodes per dimension (``method="quadrature"``).
        prior_precision: :math:`\lambda` of a prior term :math:`\tfrac\lambda2\lVert\theta\rVert^2`
            left out of ``grad_fn``/``hess_fn`` and added in closed form (see :func:`expected_grad_hess`).

    Returns:
        The new :class:`GaussianBLR`.

    Raises:
        ValueError: on a bad rate, a missing ``hess_fn``, or if the new precision is not positive definite
            (a non-convex loss or a noisy Hessian estimate; lower ``lr`` or add samples).
        FloatingPointError: if a gradient or Hessian is not finite.
    """
    _check_rate(lr)
    if update_precision:
        _check_precision_update(lr, hess_fn)
        if method == "mc":
            return von_step(state, grad_fn, hess_fn, lr=lr, num_samples=num_samples, generator=generator,
                            prior_precision=prior_precision)
    grad, hess = expected_grad_hess(
        state,
        grad_fn,
        hess_fn if update_precision else None,
        method=method,
        num_samples=num_samples,
        generator=generator,
        quadrature_points=quadrature_points,
        prior_precision=prior_precision,
    )
    precision = (1.0 - lr) * state.precision + lr * hess if update_precision else state.precision
    return _new_state(state.mean - _rate_times_inverse(precision, grad, lr), precision)


def _check_precision_update(lr, hess_fn):
    if lr > 1:
        raise ValueError(
            f"lr must be in (0, 1] when the precision is updated (got {lr}); "
            "use update_precision=False for a gradient step with a larger rate."
        )
    if hess_fn is None:
        raise ValueError("hess_fn is required when update_precision=True.")
    if isinstance(hess_fn, str) and hess_fn != "reparam":
        raise ValueError(f"hess_fn must be a function or 'reparam'; got {hess_fn!r}.")


def _check_von_arguments(lr, hess_fn, num_samples, prior_precision):
    _check_rate(lr)
    _check_precision_update(lr, hess_fn)
    _check_positive_int(num_samples, "num_samples")
    _check_prior_precision(prior_precision)


def _rate_times_inverse(precision: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    r""":math:`\rho\, S^{-1} g` for a diagonal ``(d,)`` or full ``(d, d)`` precision :math:`S`.

    Raises:
        ValueError: if :math:`S` is not positive (definite).
    """
    if precision.ndim == 1:
        if not (precision > 0).all():
            raise ValueError(
                "the new diagonal precision is not positive (the expected Hessian estimate was negative); "
                "lower lr, use more samples, or use a convex loss."
            )
        return lr * grad / precision
    chol, info = torch.linalg.cholesky_ex(precision)
    if info.item() != 0:
        raise ValueError(
            "the new precision is not positive definite (the expected Hessian estimate is indefinite); "
            "lower lr, use more samples, or use a convex loss."
        )
    return lr * torch.cholesky_solve(grad[:, None], chol)[:, 0]


def _new_state(mean: torch.Tensor, precision: torch.Tensor) -> GaussianBLR:
    if not torch.isfinite(mean).all():
        raise FloatingPointError("the new mean is not finite; lower lr or check the loss.")
    return GaussianBLR._unchecked(mean, precision)


def von_step(
    state: GaussianBLR,
    grad_fn: GradFn,
    hess_fn: GradFn | str,
    *,
    lr: float,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    prior_precision: float = 0.0,
) -> GaussianBLR:
    r"""One step of variational online Newton (VON): the BLR with Monte Carlo expectations (chapter 4).

    With :math:`K` draws from :math:`q = \mathcal N(m, S^{-1})`, :math:`S = LL^\top`
    :cite:`khan2018vadam,khan2023blr`:

    .. math::
        \theta_k &= m + L^{-\top}\varepsilon_k,\quad \varepsilon_k \sim \mathcal N(0, I), \\
        \hat g &= \frac1K \sum_k \nabla\ell(\theta_k) + \lambda m, \qquad
        \hat H = \frac1K \sum_k \nabla^2\ell(\theta_k) + \lambda I, \\
        S' &= (1-\rho)\, S + \rho\, \hat H, \qquad
        m' = m - \rho\, S'^{-1} \hat g.

    ``hess_fn="reparam"`` replaces :math:`\nabla^2\ell(\theta_k)` by Stein's
    :math:`S(\theta_k - m)\nabla\ell(\theta_k)^\top` (symmetrised), which needs gradients only
    (:func:`expected_grad_hess`). :func:`blr_step` with ``method="mc"`` runs this function.

    Args:
        state: the current :class:`GaussianBLR` (full or diagonal precision).
        grad_fn: maps ``(k, d)`` to gradients ``(k, d)``.
        hess_fn: maps ``(k, d)`` to Hessians ``(k, d, d)`` (or diagonals ``(k, d)`` for a diagonal state),
            or ``"reparam"`` for the gradient-only Stein estimate.
        lr: :math:`\rho \in (0, 1]`.
        num_samples: :math:`K`, the Monte Carlo draws per step.
        generator: a ``torch.Generator`` for reproducible draws.
        prior_precision: :math:`\lambda` of a Gaussian prior term handled in closed form (then
            ``grad_fn``/``hess_fn`` are the likelihood's), as in :cite:`khan2018vadam`.

    Returns:
        The new :class:`GaussianBLR`.

    Raises:
        ValueError: on bad arguments, or if :math:`S'` is not positive definite (lower ``lr`` or add draws).
        FloatingPointError: if a gradient, a Hessian or :math:`m'` is not finite.
    """
    _check_von_arguments(lr, hess_fn, num_samples, prior_precision)
    m, S, lam = state.mean, state.precision, prior_precision
    theta = state.sample(num_samples, generator=generator)  # theta_k = m + L^-T eps_k
    grads = _call(grad_fn, theta, "grad_fn", (tuple(theta.shape),))  # grad l(theta_k)
    hessians = _hessians_at(state, theta, grads, hess_fn)  # hess l(theta_k), or Stein's estimate
    g_hat = grads.mean(0) + lam * m  # mean_k grad l(theta_k) + lam m
    H_hat = _symmetric_plus_prior(hessians.mean(0), lam)  # mean_k hess l(theta_k) + lam I
    S_new = (1.0 - lr) * S + lr * H_hat  # S' = (1 - rho) S + rho H_hat
    m_new = m - _rate_times_inverse(S_new, g_hat, lr)  # m' = m - rho S'^-1 g_hat
    return _new_state(m_new, S_new)


def run_blr(
    state: GaussianBLR,
    grad_fn: GradFn,
    hess_fn: GradFn | str | None = None,
    *,
    lr: float | Callable[[int], float],
    num_steps: int,
    method: str = "delta",
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    update_precision: bool = True,
    quadrature_points: int = 20,
    prior_precision: float = 0.0,
    show_progress: bool = False,
) -> tuple[GaussianBLR, dict]:
    r"""Run :func:`blr_step` ``num_steps`` times and keep the trajectory (chapter 4).

    Args:
        state: the initial :class:`GaussianBLR`.
        grad_fn, hess_fn, method, num_samples, generator, update_precision, quadrature_points,
            prior_precision: as in :func:`blr_step`.
        lr: a rate, or a function of the step index ``t = 0, 1, ...`` returning the rate.
        num_steps: a positive number of steps.
        show_progress: show a progress bar (:func:`bdk.progress`).

    Returns:
        ``(final_state, trajectory)``; ``trajectory`` has ``"mean"`` ``(num_steps + 1, d)`` and
        ``"precision"`` ``(num_steps + 1, d[, d])``, starting with the initial state.

    Raises:
        FloatingPointError: naming the step, if a gradient or Hessian becomes non-finite.
        ValueError: naming the step, if the precision stops being positive definite.
    """
    _check_positive_int(num_steps, "num_steps")
    means, precisions = [state.mean], [state.precision]
    steps = range(num_steps)
    if show_progress:
        steps = progress(steps, desc="BLR")
    for t in steps:
        rate = lr(t) if callable(lr) else lr
        try:
            state = blr_step(
                state,
                grad_fn,
                hess_fn,
                lr=rate,
                method=method,
                num_samples=num_samples,
                generator=generator,
                update_precision=update_precision,
                quadrature_points=quadrature_points,
                prior_precision=prior_precision,
            )
        except FloatingPointError as err:
            raise FloatingPointError(f"BLR step {t}: {err}") from err
        except ValueError as err:
            raise ValueError(f"BLR step {t}: {err}") from err
        means.append(state.mean)
        precisions.append(state.precision)
    return state, {"mean": torch.stack(means), "precision": torch.stack(precisions)}


# --------------------------------------------------------------------------------------------------
# RMSprop/Adam-like: diagonal precision with the squared-gradient approximation
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdaptiveState:
    r"""State of :func:`adaptive_blr_step`: mean :math:`m`, diagonal precision :math:`s \ge 0`, momentum :math:`u`, step :math:`t` (chapter 4).

    Args:
        mean: :math:`m`, shape ``(d,)``.
        precision: :math:`s`, shape ``(d,)``, non-negative (Adam and RMSprop start at 0).
        momentum: :math:`u`, shape ``(d,)`` (zeros to start).
        step: the number of steps taken so far.
    """

    mean: torch.Tensor
    precision: torch.Tensor
    momentum: torch.Tensor
    step: int = 0

    def __post_init__(self):
        m = self.mean
        if not isinstance(m, torch.Tensor) or not m.is_floating_point() or m.ndim != 1:
            raise TypeError("mean must be a floating-point tensor of shape (d,).")
        for name in ("precision", "momentum"):
            v = getattr(self, name)
            if not isinstance(v, torch.Tensor) or v.shape != m.shape or v.dtype != m.dtype or v.device != m.device:
                raise ValueError(f"{name} must be a tensor with the mean's shape {tuple(m.shape)}, dtype and device.")
        if not (self.precision >= 0).all():
            raise ValueError("precision must be non-negative.")
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise ValueError(f"step must be a non-negative integer, got {self.step!r}.")

    @classmethod
    def init(cls, mean: torch.Tensor, precision: float | torch.Tensor = 0.0) -> "AdaptiveState":
        """Start at ``mean`` with precision ``precision`` (a number or a ``(d,)`` tensor) and zero momentum."""
        prec = torch.as_tensor(precision, dtype=mean.dtype, device=mean.device).expand_as(mean).clone()
        return cls(mean.clone(), prec, torch.zeros_like(mean), 0)


def adaptive_blr_step(
    state: AdaptiveState,
    grad: torch.Tensor,
    *,
    lr: float,
    beta2: float,
    beta1: float = 0.0,
    sqrt: bool = False,
    eps: float = 0.0,
    debias: bool = False,
) -> AdaptiveState:
    r"""The diagonal BLR with the squared-gradient Hessian, and the choices that turn it into RMSprop or Adam (chapter 4).

    With a diagonal Gaussian, the delta method and the squared-gradient ("gradient magnitude")
    approximation :math:`\mathrm{diag}\,\nabla^2\ell(m) \approx \hat g \circ \hat g` of the Hessian, the
    BLR precision update with rate :math:`1-\beta_2` is an exponential average of squared gradients
    :cite:`khan2023blr,khan2018vadam`. This function computes, elementwise,

    .. math::
        s_t &= \beta_2 s_{t-1} + (1 - \beta_2)\, \hat g_t^2, \qquad
        u_t = \beta_1 u_{t-1} + (1 - \beta_1)\, \hat g_t, \\
        \hat s_t &= s_t / (1 - \beta_2^t)\ \text{if debias else } s_t, \qquad
        \hat u_t = u_t / (1 - \beta_1^t)\ \text{if debias else } u_t, \\
        m_t &= m_{t-1} - \alpha\, \hat u_t / D_t, \qquad
        D_t = \sqrt{\hat s_t} + \epsilon\ \text{if sqrt else } \hat s_t + \epsilon.

    * ``beta1=0, sqrt=False, debias=False``: the BLR update :math:`m \leftarrow m - \alpha\,\hat g/(s+\epsilon)`
      of a diagonal Gaussian whose precision (per example, when :math:`\hat g` is the gradient of the
      average loss) is :math:`s + \epsilon`: ``eps`` plays the prior precision per example. With
      ``lr = 1 - beta2`` the mean and precision share the BLR's single rate :math:`\rho`.
    * ``beta1=0, sqrt=True, debias=False``: exactly ``torch.optim.RMSprop(lr, alpha=beta2, eps=eps)``
      (from :math:`s_0 = 0`) :cite:`tieleman2012rmsprop`.
    * ``sqrt=True, debias=True``: exactly ``torch.optim.Adam(lr, betas=(beta1, beta2), eps=eps)``
      (from :math:`s_0 = u_0 = 0`) :cite:`kingma2015adam`.

    The square root, the :math:`\epsilon` outside it, momentum and debiasing are not part of the BLR;
    they are the named choices that separate the two.

    Args:
        state: the current :class:`AdaptiveState`.
        grad: :math:`\hat g_t`, the (minibatch) gradient at :math:`m_{t-1}`, shape ``(d,)``.
        lr: :math:`\alpha > 0`.
        beta2: :math:`\beta_2 \in [0, 1)`, the precision's decay (its BLR rate is :math:`1-\beta_2`).
        beta1: :math:`\beta_1 \in [0, 1)`, the momentum's decay (0: no momentum).
        sqrt: divide by :math:`\sqrt{\hat s}+\epsilon` instead of :math:`\hat s+\epsilon`.
        eps: :math:`\epsilon \ge 0`.
        debias: divide the averages by :math:`1-\beta^t` as Adam does.

    Returns:
        The new :class:`AdaptiveState`.

    Raises:
        ValueError: on bad hyperparameters or a gradient of the wrong shape.
        FloatingPointError: if the gradient or the new mean is not finite (e.g. dividing by a zero
            precision with ``eps=0``).
    """
    _check_rate(lr)
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not (0.0 <= beta < 1.0):
            raise ValueError(f"{name} must be in [0, 1), got {beta!r}.")
    if not (eps >= 0.0) or not math.isfinite(eps):
        raise ValueError(f"eps must be a non-negative finite number, got {eps!r}.")
    if not isinstance(grad, torch.Tensor) or grad.shape != state.mean.shape:
        raise ValueError(f"grad must be a tensor of shape {tuple(state.mean.shape)}.")
    if not torch.isfinite(grad).all():
        raise FloatingPointError(f"adaptive BLR step {state.step + 1}: the gradient is NaN or infinite.")
    t = state.step + 1
    s = beta2 * state.precision + (1.0 - beta2) * grad * grad
    u = beta1 * state.momentum + (1.0 - beta1) * grad
    s_hat = s / (1.0 - beta2**t) if debias else s
    u_hat = u / (1.0 - beta1**t) if debias else u
    denom = (s_hat.sqrt() if sqrt else s_hat) + eps
    mean = state.mean - lr * u_hat / denom
    if not torch.isfinite(mean).all():
        raise FloatingPointError(
            f"adaptive BLR step {t}: the mean is not finite (a zero precision with eps=0?); use eps > 0."
        )
    return AdaptiveState(mean, s, u, t)


# --------------------------------------------------------------------------------------------------
# References: Laplace and the exact optimum of the Gaussian variational objective
# --------------------------------------------------------------------------------------------------


def laplace_approximation(
    grad_fn: GradFn,
    hess_fn: GradFn,
    init: torch.Tensor,
    *,
    max_steps: int = 100,
    tol: float = 1e-10,
) -> GaussianBLR:
    r"""The Laplace approximation :math:`\mathcal N(\theta_\star, \nabla^2\ell(\theta_\star)^{-1})` (chapter 4).

    The mode :math:`\theta_\star` is found by Newton's method, which is the delta-method BLR with
    :math:`\rho = 1`; the fixed point of the delta-method BLR is therefore the Laplace approximation
    :cite:`khan2023blr`.

    Args:
        grad_fn, hess_fn: as in :func:`blr_step` (full Hessians).
        init: the starting point, shape ``(d,)``.
        max_steps: the Newton steps allowed.
        tol: stop when the Newton step's largest entry is below ``tol``.

    Returns:
        A full-precision :class:`GaussianBLR`.

    Raises:
        RuntimeError: if Newton's method does not converge in ``max_steps``.
    """
    theta = init.clone()
    for _ in range(max_steps):
        g = grad_fn(theta[None])[0]
        h = hess_fn(theta[None])[0]
        delta = torch.linalg.solve(h, g)
        theta = theta - delta
        if delta.abs().max().item() < tol:
            h = hess_fn(theta[None])[0]
            return GaussianBLR(theta, 0.5 * (h + h.T))
    raise RuntimeError(f"Newton's method did not converge in {max_steps} steps; raise max_steps or check the loss.")


def gaussian_vi_optimum(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    init: GaussianBLR,
    *,
    quadrature_points: int = 30,
    max_iter: int = 500,
    tol: float = 1e-12,
) -> GaussianBLR:
    r"""Minimise the Gaussian variational objective directly, as a reference for the BLR (chapter 4).

    .. math:: \min_{m, C}\ \sum_j w_j\, \ell(m + C z_j) - \sum_i \log C_{ii},

    which is :math:`\mathbb E_q[\ell] - \mathcal H(q)` up to a constant for
    :math:`q = \mathcal N(m, C C^\top)` with lower-triangular :math:`C`, the expectation computed by
    tensor-product Gauss-Hermite quadrature (nodes :math:`z_j`, weights :math:`w_j`), minimised with
    L-BFGS. It does not use the BLR: its optimum is the BLR's fixed point
    (:math:`S = \mathbb E_q[\nabla^2\ell]`, :math:`\mathbb E_q[\nabla\ell] = 0`) :cite:`khan2023blr`,
    which makes it an independent check. For small dimensions only.

    Args:
        loss_fn: the loss of parameters ``(k, d)``, returning ``(k,)``.
        init: a starting :class:`GaussianBLR` (e.g. the Laplace approximation).
        quadrature_points: Gauss-Hermite nodes per dimension.
        max_iter: L-BFGS iterations.
        tol: L-BFGS gradient tolerance.

    Returns:
        The optimum as a full-precision :class:`GaussianBLR`.

    Raises:
        RuntimeError: if the objective's gradient at the end is above 1e-6 (not converged).
    """
    d = init.dim
    dtype, device = init.mean.dtype, init.mean.device
    z, w = _hermite_rule(quadrature_points, d, dtype, device)
    chol0 = torch.linalg.cholesky(init.covariance())
    mean = init.mean.clone().requires_grad_(True)
    log_diag = chol0.diagonal().log().clone().requires_grad_(True)
    rows, cols = torch.tril_indices(d, d, offset=-1, device=device)
    off = chol0[rows, cols].clone().requires_grad_(True)

    def factor():
        c = torch.diag(log_diag.exp())
        return c.index_put((rows, cols), off)

    def objective():
        c = factor()
        theta = mean + z @ c.T
        return torch.dot(w, loss_fn(theta)) - log_diag.sum()

    opt = torch.optim.LBFGS(
        [mean, log_diag, off], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-15,
        history_size=50, line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        value = objective()
        value.backward()
        return value

    opt.step(closure)
    opt.zero_grad()
    objective().backward()
    residual = max(t.grad.abs().max().item() for t in (mean, log_diag, off) if t.numel())
    if not residual < 1e-6:
        raise RuntimeError(
            f"gaussian_vi_optimum: L-BFGS stopped with a gradient of {residual:.1e}; raise max_iter or start nearer."
        )
    with torch.no_grad():
        c = factor()
        cov = c @ c.T
        precision = torch.cholesky_inverse(torch.linalg.cholesky(cov))
        return GaussianBLR(mean.detach().clone(), 0.5 * (precision + precision.T))


def grad_hess_from_loss(loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[GradFn, GradFn]:
    r"""Batched gradient and Hessian functions of a scalar loss :math:`\ell(\theta)`, by ``torch.func`` (chapter 4).

    Args:
        loss_fn: maps one parameter vector ``(d,)`` to a scalar.

    Returns:
        ``(grad_fn, hess_fn)`` mapping ``(k, d)`` to ``(k, d)`` and ``(k, d, d)``, as :func:`blr_step` wants.
    """
    return torch.func.vmap(torch.func.grad(loss_fn)), torch.func.vmap(torch.func.hessian(loss_fn))


# --------------------------------------------------------------------------------------------------
# Two models with closed-form derivatives
# --------------------------------------------------------------------------------------------------


def _as_batch(theta: torch.Tensor, dim: int) -> tuple[torch.Tensor, bool]:
    if theta.ndim == 1:
        theta, single = theta[None], True
    else:
        single = False
    if theta.ndim != 2 or theta.shape[1] != dim:
        raise ValueError(f"theta must have shape ({dim},) or (k, {dim}), got {tuple(theta.shape)}.")
    return theta, single


def _check_xy(x, y, name):
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: x and y must be tensors.")
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"{name}: x must be (n, d) and y (n,) with the same n > 0; got {tuple(x.shape)}, {tuple(y.shape)}.")
    if not x.is_floating_point():
        raise TypeError(f"{name}: x must be floating point, got {x.dtype}.")


class LogisticRegressionPotential(Potential):
    r"""The potential of Bayesian logistic regression, with closed-form gradient and Hessian (chapter 4).

    .. math::
        U(\theta) = \frac{\lambda}{2}\lVert\theta\rVert^2
        + \sum_{i=1}^N \big[\log(1 + e^{x_i^\top\theta}) - y_i\, x_i^\top\theta\big],
        \quad \nabla U = \lambda\theta + \sum_i (\sigma(x_i^\top\theta) - y_i) x_i,
        \quad \nabla^2 U = \lambda I + \sum_i \sigma_i(1-\sigma_i) x_i x_i^\top,

    labels :math:`y_i \in \{0, 1\}`, prior :math:`\mathcal N(0, \lambda^{-1} I)` (the book's one scaling
    convention: summed over the data). A minibatch ``batch`` (indices) gives the unbiased estimate with
    the likelihood scaled by :math:`N/n`. ``theta`` is ``(d,)`` or a batch ``(k, d)``: a
    :class:`bdk.langevin.Potential`, the interface that the samplers of chapters 1 and 3 take.

    Args:
        x: inputs ``(N, d)``, floating point (add a column of ones for a bias).
        y: labels ``(N,)`` in {0, 1}.
        prior_precision: :math:`\lambda \ge 0`.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, prior_precision: float = 1.0):
        _check_xy(x, y, "LogisticRegressionPotential")
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("LogisticRegressionPotential: labels y must be 0 or 1.")
        if not (prior_precision >= 0):
            raise ValueError(f"prior_precision must be >= 0, got {prior_precision!r}.")
        super().__init__()
        self.x = x
        self.y = y.to(x.dtype)
        self.prior_precision = float(prior_precision)

    @property
    def num_data(self) -> int:
        return self.x.shape[0]

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    def _data(self, batch):
        if batch is None:
            return self.x, self.y, 1.0
        x, y = self.x[batch], self.y[batch]
        if x.shape[0] == 0:
            raise ValueError("the minibatch is empty.")
        return x, y, self.num_data / x.shape[0]

    def U(self, theta: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """The potential (or its minibatch estimate) at ``theta`` ``(d,)`` or ``(k, d)``."""
        theta, single = _as_batch(theta, self.dim)
        x, y, scale = self._data(batch)
        z = theta @ x.T
        nll = torch.nn.functional.softplus(z) - y * z
        out = scale * nll.sum(-1) + 0.5 * self.prior_precision * (theta**2).sum(-1)
        return out[0] if single else out

    def grad_U(self, theta: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """The gradient, shape like ``theta``."""
        theta, single = _as_batch(theta, self.dim)
        x, y, scale = self._data(batch)
        r = torch.sigmoid(theta @ x.T) - y
        out = scale * r @ x + self.prior_precision * theta
        return out[0] if single else out

    def hess_U(self, theta: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """The Hessian, ``(d, d)`` or ``(k, d, d)``."""
        theta, single = _as_batch(theta, self.dim)
        x, _, scale = self._data(batch)
        p = torch.sigmoid(theta @ x.T)
        weights = p * (1 - p)  # (k, n)
        out = scale * torch.einsum("kn,ni,nj->kij", weights, x, x)
        out = out + self.prior_precision * torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return out[0] if single else out


class LinearRegressionPotential(Potential):
    r"""The potential of Bayesian linear regression, a conjugate model with a closed-form posterior (chapter 4).

    .. math::
        U(\theta) = \frac{\tau}{2}\lVert y - X\theta\rVert^2 + \frac{\lambda}{2}\lVert\theta\rVert^2,
        \qquad p(\theta\mid\mathcal D) = \mathcal N\big(\Lambda^{-1}\tau X^\top y,\ \Lambda^{-1}\big),
        \quad \Lambda = \tau X^\top X + \lambda I,

    with noise precision :math:`\tau` and prior :math:`\mathcal N(0, \lambda^{-1}I)`. The gradient is
    linear and the Hessian :math:`\Lambda` constant, so the delta method is exact and one BLR step with
    :math:`\rho = 1` lands on the posterior :cite:`khan2023blr`. ``theta`` is ``(d,)`` or a batch
    ``(k, d)``: a :class:`bdk.langevin.Potential`.

    Args:
        x: design matrix ``(N, d)``.
        y: targets ``(N,)``.
        noise_precision: :math:`\tau > 0`.
        prior_precision: :math:`\lambda \ge 0` (:math:`\Lambda` must be invertible).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, noise_precision: float = 1.0, prior_precision: float = 1.0):
        _check_xy(x, y, "LinearRegressionPotential")
        if not (noise_precision > 0):
            raise ValueError(f"noise_precision must be > 0, got {noise_precision!r}.")
        if not (prior_precision >= 0):
            raise ValueError(f"prior_precision must be >= 0, got {prior_precision!r}.")
        super().__init__()
        self.x, self.y = x, y.to(x.dtype)
        self.noise_precision = float(noise_precision)
        self.prior_precision = float(prior_precision)

    @property
    def num_data(self) -> int:
        return self.x.shape[0]

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    def U(self, theta: torch.Tensor) -> torch.Tensor:
        theta, single = _as_batch(theta, self.dim)
        resid = self.y - theta @ self.x.T
        out = 0.5 * self.noise_precision * (resid**2).sum(-1) + 0.5 * self.prior_precision * (theta**2).sum(-1)
        return out[0] if single else out

    def grad_U(self, theta: torch.Tensor) -> torch.Tensor:
        theta, single = _as_batch(theta, self.dim)
        resid = theta @ self.x.T - self.y
        out = self.noise_precision * resid @ self.x + self.prior_precision * theta
        return out[0] if single else out

    def hess_U(self, theta: torch.Tensor) -> torch.Tensor:
        theta, single = _as_batch(theta, self.dim)
        h = self.posterior_precision()
        out = h.expand(theta.shape[0], -1, -1)
        return out[0] if single else out

    def posterior_precision(self) -> torch.Tensor:
        r""":math:`\Lambda = \tau X^\top X + \lambda I`."""
        eye = torch.eye(self.dim, dtype=self.x.dtype, device=self.x.device)
        return self.noise_precision * self.x.T @ self.x + self.prior_precision * eye

    def posterior(self) -> GaussianBLR:
        """The exact posterior as a :class:`GaussianBLR` (computed by a Cholesky solve)."""
        prec = self.posterior_precision()
        mean = torch.cholesky_solve((self.noise_precision * self.x.T @ self.y)[:, None], torch.linalg.cholesky(prec))[:, 0]
        return GaussianBLR(mean, prec)


# --------------------------------------------------------------------------------------------------
# VON for an nn.Module's parameters
# --------------------------------------------------------------------------------------------------


def _von_real(value) -> float | None:
    """``value`` as a float if it is a real number (a Python or NumPy scalar, or a one-element tensor), else None."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def _check_von_group(group: dict, where: str) -> None:
    """Raise ``ValueError``, prefixed by ``where``, if a VON hyperparameter of ``group`` is out of range.

    A few comparisons of Python numbers: cheap enough to run at every step and every sample.

    Args:
        group: a parameter group, or the constructor's defaults.
        where: names the call and the group, e.g. ``"VON step 3, param_groups[1]"``.

    Raises:
        ValueError: naming ``where``, the hyperparameter, its value and the valid range.
    """
    lr = _von_real(group["lr"])
    if lr is None or not 0 < lr <= 1:
        raise ValueError(
            f"{where}: lr must be in (0, 1], got {group['lr']!r}. If a learning-rate scheduler sets it, "
            "check that its schedule stays in range (a linear decay run past its end goes to 0 or below)."
        )
    for name in ("ess", "hess_init"):
        value = _von_real(group[name])
        if value is None or not 0 < value < math.inf:
            raise ValueError(f"{where}: {name} must be a positive finite number, got {group[name]!r}.")
    wd = _von_real(group["weight_decay"])
    if wd is None or not 0 <= wd < math.inf:
        raise ValueError(
            f"{where}: weight_decay must be a non-negative finite number, got {group['weight_decay']!r} "
            "(it is the prior precision divided by ess)."
        )
    if group["hess_approx"] not in ("reparam", "gradient_magnitude"):
        raise ValueError(f"{where}: hess_approx must be 'reparam' or 'gradient_magnitude', got {group['hess_approx']!r}.")


def _von_all_finite(tensors: list[torch.Tensor]) -> bool:
    """True if no tensor holds a NaN or inf: one fused norm and one host sync per device.

    A finite tensor whose norm overflows is confirmed elementwise before it counts as non-finite.
    """
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t)
    for ts in by_device.values():
        norms = torch._foreach_norm(ts)
        if not bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):
            if not all(bool(torch.isfinite(t).all()) for t in ts):
                return False
    return True


class VON(torch.optim.Optimizer):
    r"""Variational online Newton with a diagonal Gaussian over a module's parameters (chapter 4).

    The BLR for :math:`q = \mathcal N(m, \mathrm{diag}(\sigma^2))` with Monte Carlo expectations
    :cite:`khan2018vadam,khan2023blr`, in the convention of the IVON chapter (and of the ``ivon``
    package): the loss passed to ``backward()`` is the **average** negative log likelihood of the
    minibatch, ``ess`` is the effective sample size :math:`N`, ``weight_decay`` is
    :math:`\delta = \lambda/N`, and :math:`\sigma^2 = 1/(N(h + \delta))`. Per step, with
    :math:`\hat g` and :math:`\hat h` the averages over the samples drawn since the last step,

    .. math::
        h \leftarrow (1-\rho)\, h + \rho\, \hat h, \qquad
        m \leftarrow m - \rho\, \frac{\hat g + \delta m}{h + \delta}.

    This is :func:`blr_step` on :math:`U = N(\bar\ell + \tfrac{\delta}{2}\lVert\theta\rVert^2)` with
    precision :math:`N(h+\delta)`. The Hessian estimate is

    * ``hess_approx="reparam"`` (default): :math:`\hat h = \hat g \circ (\theta - m) / \sigma^2`, an
      unbiased estimate of :math:`\mathbb E_q[\mathrm{diag}\nabla^2\bar\ell]` by Stein's lemma; it can
      be negative, so :math:`h` can lose positivity (the step then raises; the next chapter's IVON
      adds a correction that prevents it);
    * ``hess_approx="gradient_magnitude"``: :math:`\hat h = \hat g^2`, always non-negative but biased
      (the squared-gradient approximation of RMSprop/Adam).

    Usage (one Monte Carlo sample per step; loop over ``sampled_params`` for more)::

        opt = VON(model.parameters(), lr=0.1, ess=N, weight_decay=1.0 / N, generator=gen)
        with opt.sampled_params(train=True):
            loss = F.cross_entropy(model(x), y)   # average over the minibatch
            loss.backward()
        opt.step()

    The hyperparameters of every group are checked again at each :meth:`sampled_params` and
    :meth:`step`, so a scheduler or a user editing ``param_groups`` cannot set an invalid value
    silently. A refused step changes nothing (weights, ``hess``, step count) and discards the
    samples drawn since the last step, so the next iteration starts clean. :meth:`state_dict`
    includes the state of ``generator``, so a resumed run repeats the uninterrupted one bit for bit.

    Args:
        params: parameters or parameter groups (real floating-point tensors).
        lr: :math:`\rho \in (0, 1]`.
        ess: :math:`N > 0`.
        hess_init: :math:`h_0 > 0`.
        weight_decay: :math:`\delta \ge 0`.
        hess_approx: ``"reparam"`` or ``"gradient_magnitude"``.
        generator: an optional ``torch.Generator`` for the weight noise (without one, the global
            torch generator is used and a resumed run is exact only if the caller restores it).

    Raises:
        ValueError: on bad hyperparameters, or a parameter that is not a real floating-point tensor
            (complex ones would be sampled at the wrong temperature).
    """

    def __init__(
        self,
        params,
        lr: float,
        ess: float,
        hess_init: float = 1.0,
        weight_decay: float = 0.0,
        hess_approx: str = "reparam",
        generator: torch.Generator | None = None,
    ):
        defaults = dict(lr=lr, ess=ess, hess_init=hess_init, weight_decay=weight_decay, hess_approx=hess_approx)
        _check_von_group(defaults, "VON")
        self.generator = generator
        self._num_draws = 0  # training samples recorded since the last step
        self._steps = 0
        self._active = False  # inside sampled_params
        super().__init__(params, defaults)  # calls add_param_group, which initialises the state

    # ----------------------------------------------------------------------------------------------
    # groups, state, (de)serialisation

    def add_param_group(self, param_group: dict) -> None:
        """Add a parameter group (hyperparameters not given take the constructor's values) and its state.

        Raises:
            ValueError: if a hyperparameter of the group is out of range or a parameter is not a
                real floating-point tensor; the group is then not added.
            RuntimeError: inside :meth:`sampled_params`, or between a training sample and its step.
        """
        if self._active or self._num_draws:
            raise RuntimeError(
                "VON.add_param_group() must be called between steps, not inside sampled_params() or after "
                "sampled_params(train=True) and before the step() that uses its gradients."
            )
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        where = f"VON param_groups[{len(self.param_groups) - 1}]"
        try:
            _check_von_group(group, where)
            for p in group["params"]:
                if not p.is_floating_point():
                    raise ValueError(
                        f"{where}: VON optimises real floating-point parameters only, got one of dtype {p.dtype} "
                        f"and shape {tuple(p.shape)}."
                    )
        except ValueError:
            self.param_groups.pop()  # a refused group leaves the optimizer as it was
            raise
        for p in group["params"]:
            state = self.state[p]
            state["hess"] = torch.full_like(p, float(group["hess_init"]))
            state["grad_sum"] = torch.zeros_like(p)
            state["hess_sum"] = torch.zeros_like(p)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        # torch pickles only defaults, state and param_groups; the sample count is not kept
        self.__dict__.setdefault("generator", None)
        self.__dict__.setdefault("_num_draws", 0)
        self.__dict__.setdefault("_steps", 0)
        self._active = False

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.update(generator=self.generator, _num_draws=self._num_draws, _steps=self._steps)
        return state

    def state_dict(self):
        """The optimizer state plus the step and sample counts and the state of ``generator`` (if any)."""
        out = super().state_dict()
        out["von_num_draws"] = self._num_draws
        out["von_steps"] = self._steps
        if self.generator is not None:
            out["von_generator"] = {"state": self.generator.get_state(), "device": str(self.generator.device)}
        return out

    def load_state_dict(self, state_dict):
        """Restore :meth:`state_dict`, including the generator's state, so a resumed run is identical.

        The tensors are copied, so this optimizer never shares storage with the one that saved them.
        If this optimizer has no generator but the saved one had, a generator is created for it.

        Raises:
            RuntimeError: inside :meth:`sampled_params`.
        """
        if self._active:
            raise RuntimeError("VON.load_state_dict() cannot be called inside sampled_params(); call it outside the with block.")
        state_dict = dict(state_dict)
        num_draws = state_dict.pop("von_num_draws", 0)
        steps = state_dict.pop("von_steps", 0)
        gen = state_dict.pop("von_generator", None)
        super().load_state_dict(state_dict)
        for st in self.state.values():
            for k, v in list(st.items()):
                if isinstance(v, torch.Tensor):
                    st[k] = v.clone()
        self._num_draws, self._steps = num_draws, steps
        if gen is not None:
            if self.generator is None:
                self.generator = torch.Generator(device=gen["device"])
            self.generator.set_state(gen["state"])

    # ----------------------------------------------------------------------------------------------
    # sampling

    def _std(self, p, group):
        return 1.0 / torch.sqrt(group["ess"] * (self.state[p]["hess"] + group["weight_decay"]))

    def _check_groups(self, where: str) -> None:
        for gi, group in enumerate(self.param_groups):
            _check_von_group(group, f"{where}, param_groups[{gi}]")

    def _params(self) -> list[tuple[dict, torch.Tensor]]:
        return [(group, p) for group in self.param_groups for p in group["params"]]

    @contextlib.contextmanager
    def sampled_params(self, train: bool = False) -> Iterator[None]:
        r"""Temporarily set the parameters to a draw :math:`\theta = m + \sigma\varepsilon` from :math:`q`.

        With ``train=True`` the gradient left in ``.grad`` by ``backward()`` inside the block is
        recorded (and ``.grad`` cleared) on exit for the next :meth:`step`; ``.grad`` is also cleared
        on entry, so only gradients computed inside the block count. The mean is restored in a
        ``finally:`` block, also when the body raises; then nothing is recorded and ``.grad`` is
        cleared, so the failed sample's gradient cannot leak into the next one.

        Raises:
            RuntimeError: when nested, or when ``train=True`` and a parameter has no gradient at
                the end of the block.
            ValueError: naming the group, if a hyperparameter of a group is out of range.
        """
        if self._active:
            raise RuntimeError("VON.sampled_params() blocks cannot be nested: the mean weights are already replaced by a sample.")
        self._check_groups("VON.sampled_params")
        params = self._params()
        means, noises = [], []
        with torch.no_grad():
            for group, p in params:
                if train:
                    p.grad = None
                eps = torch.randn(p.shape, generator=self.generator, dtype=p.dtype, device=p.device)
                noise = eps * self._std(p, group)
                means.append(p.detach().clone())
                noises.append(noise)
                p.add_(noise)
        self._active = True
        completed = False
        try:
            yield
            completed = True
        finally:
            self._active = False
            record = completed and train
            missing = record and any(p.grad is None for _, p in params)
            with torch.no_grad():
                for i, (group, p) in enumerate(params):
                    if record and not missing:
                        self._record(p, group, p.grad.detach(), noises[i])
                    if train or not completed:
                        p.grad = None
                    p.copy_(means[i])  # always restore the mean
            if record:
                if missing:
                    raise RuntimeError(
                        "VON.sampled_params(train=True): a parameter has no gradient; "
                        "call loss.backward() inside the block."
                    )
                self._num_draws += 1

    def _record(self, p: torch.Tensor, group: dict, g: torch.Tensor, noise: torch.Tensor) -> None:
        """Add one sample's gradient and Hessian estimate to the sums of ``p``."""
        state = self.state[p]
        state["grad_sum"].add_(g)
        if group["hess_approx"] == "reparam":
            var = self._std(p, group) ** 2
            state["hess_sum"].add_(g * noise / var)
        else:
            state["hess_sum"].add_(g * g)

    # ----------------------------------------------------------------------------------------------
    # the update

    def _discard_draws(self) -> None:
        """Forget the samples drawn since the last step."""
        for _, p in self._params():
            self.state[p]["grad_sum"].zero_()
            self.state[p]["hess_sum"].zero_()
        self._num_draws = 0

    def _new_hessians(self, where: str) -> list[torch.Tensor]:
        """The Hessian estimates the step would set, one per parameter, after checking the samples.

        Raises:
            FloatingPointError: if a gradient sum or Hessian-estimate sum holds a NaN or inf.
            ValueError: if a new precision ``h + weight_decay`` is not positive.
        """
        params = self._params()
        sums = [self.state[p][k] for _, p in params for k in ("grad_sum", "hess_sum")]
        if not _von_all_finite(sums):
            bad = next(p for _, p in params if not all(bool(self.state[p][k].isfinite().all()) for k in ("grad_sum", "hess_sum")))
            raise FloatingPointError(
                f"{where}: a gradient is NaN or infinite (parameter of shape {tuple(bad.shape)}). Lower the "
                "learning rate, check the data for NaNs, or check the loss."
            )
        k = self._num_draws
        hessians, lows = [], []
        for group, p in params:
            rho, state = group["lr"], self.state[p]
            hess = (1 - rho) * state["hess"] + rho * (state["hess_sum"] / k)
            hessians.append(hess)
            lows.append((hess + group["weight_decay"]).min().to(device=params[0][1].device, dtype=torch.float64))
        if lows and not bool((torch.stack(lows) > 0).all()):  # one host sync; a NaN counts as non-positive
            raise ValueError(
                f"{where}: the precision h + weight_decay became non-positive "
                "(the reparameterisation Hessian estimate was negative); lower lr, draw more samples, "
                "use hess_approx='gradient_magnitude', or use IVON (next chapter), which corrects this."
            )
        return hessians

    @torch.no_grad()
    def step(self, closure=None):
        """Update the mean and the Hessian estimate from the samples drawn since the last step.

        Everything is checked before anything changes: a refused step leaves the weights, the
        Hessian estimates and the step count as they were, and discards the samples drawn since the
        last step (so the next ``sampled_params(train=True)`` + ``backward()`` + ``step()`` is clean).

        Raises:
            RuntimeError: if no sample was drawn with ``sampled_params(train=True)``, or inside
                :meth:`sampled_params` (then nothing is discarded).
            FloatingPointError: naming the step, if a gradient is not finite.
            ValueError: naming the step, if the Hessian estimate stops being positive, or (naming the
                group too) if a hyperparameter is out of range, e.g. a scheduler's ``lr`` outside (0, 1].
        """
        if closure is not None:
            raise ValueError("VON.step does not take a closure; compute the loss inside sampled_params(train=True).")
        if self._active:
            raise RuntimeError("VON.step() cannot be called inside sampled_params(); call it after the with block.")
        if self._num_draws == 0:
            raise RuntimeError("VON.step: no sample was drawn; compute the loss inside `with opt.sampled_params(train=True):`.")
        where = f"VON step {self._steps + 1}"
        try:
            self._check_groups(where)
            hessians = self._new_hessians(where)
        except (ValueError, FloatingPointError):
            self._discard_draws()
            raise
        k = self._num_draws
        for (group, p), hess in zip(self._params(), hessians):
            rho, delta = group["lr"], group["weight_decay"]
            state = self.state[p]
            state["hess"] = hess
            p.sub_(rho * (state["grad_sum"] / k + delta * p) / (hess + delta))
        self._discard_draws()
        self._steps += 1
        return None

    def posterior_std(self) -> list[torch.Tensor]:
        r"""The standard deviations :math:`\sigma = 1/\sqrt{N(h+\delta)}` of every parameter, in order."""
        return [self._std(p, g) for g, p in self._params()]

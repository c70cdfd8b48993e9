r"""Stochastic gradient descent as a stochastic differential equation.

Introduced in the chapter "SGD as an SDE" (``book/sgd-sde.ipynb``). Constant-learning-rate SGD,

.. math::

    \theta_{k+1} = \theta_k - \eta\,\big(\nabla L(\theta_k) + \varepsilon_k\big), \qquad
    \operatorname{Cov}[\varepsilon_k] = C,

is, for small :math:`\eta` and on the time scale :math:`t = k\eta`, the diffusion
:math:`\mathrm d\theta = -\nabla L\,\mathrm dt + \sqrt{\eta C}\,\mathrm dW` :cite:p:`li2017sme`. With isotropic
noise :math:`C = \sigma^2 I` this is Langevin dynamics (``bdk.langevin``) at temperature
:math:`T = \eta\sigma^2/2`, whose stationary density is :math:`\propto e^{-2L/(\eta\sigma^2)}`
:cite:p:`mandt2017sgd`. On a quadratic :math:`L = \tfrac12 \theta^\top H \theta` everything is Gaussian and
exact: the SDE's stationary covariance solves the continuous Lyapunov equation
:math:`HS + SH = \eta C`, the SGD iteration's own stationary covariance the discrete one
:math:`S = (I - \eta H) S (I - \eta H)^\top + \eta^2 C` (:func:`stationary_covariance`).

This module holds the closed forms (:func:`sgd_temperature`, :func:`sgd_stationary_variance`,
:func:`sde_stationary_variance`, :func:`stationary_covariance`), SGD with additive Gaussian gradient
noise on many chains at once (the kernel :func:`noisy_sgd_step`, run by ``bdk.langevin.run_chains`` in
:func:`noisy_sgd`), and minibatch SGD on least squares
(:func:`minibatch_sgd_least_squares`) with its gradient-noise covariance
(:func:`least_squares_gradient_noise_covariance`) and the exact stationary covariance of the minibatch
iteration (:func:`least_squares_sgd_stationary_covariance`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy import linalg

from .langevin import _check_count, _check_generator, _check_particles, _check_positive, _check_thin, run_chains

__all__ = [
    "sgd_temperature",
    "sgd_stationary_variance",
    "sde_stationary_variance",
    "stationary_covariance",
    "noisy_sgd_step",
    "noisy_sgd",
    "least_squares_gradient_noise_covariance",
    "minibatch_sgd_least_squares",
    "least_squares_sgd_stationary_covariance",
]


def _as_array(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    array = np.asarray(value, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite.")
    return array


def sgd_temperature(lr, noise_std):
    r"""The temperature :math:`T = \eta\sigma^2/2` of SGD with gradient-noise standard deviation :math:`\sigma`.

    Constant-rate SGD behaves like Langevin dynamics :math:`\mathrm d\theta = -\nabla L\,\mathrm dt +
    \sqrt{2T}\,\mathrm dW` at this temperature :cite:p:`mandt2017sgd`, so its stationary density is close
    to :math:`e^{-L/T} = e^{-2L/(\eta\sigma^2)}`. Works elementwise on arrays (per-parameter rates and
    noise). Introduced in the chapter "SGD as an SDE".

    Args:
        lr: the learning rate :math:`\eta > 0` (a number or an array).
        noise_std: the gradient-noise standard deviation :math:`\sigma \ge 0` (a number or an array).

    Returns:
        :math:`\eta\sigma^2/2` (a float, or an array for array arguments).
    """
    lr, noise_std = _as_array(lr, "lr"), _as_array(noise_std, "noise_std")
    if (lr <= 0).any() or (noise_std < 0).any():
        raise ValueError("lr must be > 0 and noise_std >= 0.")
    out = lr * noise_std**2 / 2
    return float(out) if out.ndim == 0 else out


def sgd_stationary_variance(curvature, lr, noise_std):
    r"""The exact stationary variance of SGD on :math:`L = \tfrac h2 \theta^2` with gradient noise :math:`\sigma`.

    The iteration :math:`\theta' = (1 - \eta h)\theta - \eta\sigma\xi` is an AR(1) process; its stationary
    variance solves :math:`v = (1 - \eta h)^2 v + \eta^2\sigma^2`:

    .. math::

        v = \frac{\eta\sigma^2}{h\,(2 - \eta h)} = \frac{T}{h}\cdot\frac{2}{2 - \eta h}, \qquad T = \frac{\eta\sigma^2}{2},

    which tends to the SDE's :math:`T/h` (:func:`sde_stationary_variance`) as :math:`\eta h \to 0`.
    Elementwise on arrays. Introduced in the chapter "SGD as an SDE".

    Args:
        curvature: :math:`h > 0`.
        lr: :math:`\eta > 0`, with :math:`\eta h < 2` (otherwise the iteration diverges).
        noise_std: :math:`\sigma \ge 0`.

    Raises:
        ValueError: if :math:`\eta h \ge 2` (no stationary distribution) or an argument is out of range.
    """
    h, lr, s = _as_array(curvature, "curvature"), _as_array(lr, "lr"), _as_array(noise_std, "noise_std")
    if (h <= 0).any() or (lr <= 0).any() or (s < 0).any():
        raise ValueError("curvature and lr must be > 0 and noise_std >= 0.")
    if (lr * h >= 2).any():
        raise ValueError(
            f"lr * curvature = {np.max(lr * h):.4g} >= 2: SGD diverges on this quadratic and has no stationary "
            "distribution; use lr < 2 / curvature."
        )
    out = lr * s**2 / (h * (2 - lr * h))
    return float(out) if out.ndim == 0 else out


def sde_stationary_variance(curvature, lr, noise_std):
    r"""The stationary variance :math:`T/h = \eta\sigma^2/(2h)` of the SDE approximation of SGD on :math:`\tfrac h2\theta^2`.

    Elementwise on arrays. Introduced in the chapter "SGD as an SDE".
    """
    h = _as_array(curvature, "curvature")
    if (h <= 0).any():
        raise ValueError("curvature must be > 0.")
    out = _as_array(sgd_temperature(lr, noise_std), "T") / h
    return float(out) if out.ndim == 0 else out


def stationary_covariance(hessian, noise_cov, lr, method: str = "discrete") -> np.ndarray:
    r"""Stationary covariance of SGD on a quadratic, from the continuous or the discrete Lyapunov equation.

    For :math:`L(\theta) = \tfrac12 (\theta - \theta^*)^\top H (\theta - \theta^*)`, gradient noise of
    covariance :math:`C` and learning rates :math:`P = \operatorname{diag}(\eta_i)` (a scalar :math:`\eta` is
    :math:`\eta I`), the iteration :math:`\theta' = \theta - P(\nabla L + \varepsilon)` has the stationary
    covariance :math:`S` with :cite:p:`mandt2017sgd`

    .. math::

        \text{continuous (SDE):}\quad PH\,S + S\,HP = P C P, \qquad
        \text{discrete (exact):}\quad S = (I - PH)\,S\,(I - PH)^\top + P C P .

    For a scalar rate the continuous one is :math:`HS + SH = \eta C`. Solved with
    ``scipy.linalg.solve_continuous_lyapunov`` / ``solve_discrete_lyapunov``. Introduced in the chapter
    "SGD as an SDE".

    Args:
        hessian: :math:`H`, shape ``(d, d)``, symmetric positive definite.
        noise_cov: :math:`C`, shape ``(d, d)``, symmetric positive semi-definite.
        lr: :math:`\eta > 0`, a number or per-parameter rates of shape ``(d,)``.
        method: ``"discrete"`` (the SGD iteration, exact) or ``"continuous"`` (the SDE approximation).

    Returns:
        :math:`S`, a float64 NumPy array of shape ``(d, d)``.

    Raises:
        ValueError: for mismatched shapes, a non-positive rate, an unknown method, or rates for which the
            iteration diverges (a spectral radius of :math:`I - PH` of at least 1).
    """
    h = np.atleast_2d(_as_array(hessian, "hessian"))
    c = np.atleast_2d(_as_array(noise_cov, "noise_cov"))
    d = h.shape[0]
    if h.shape != (d, d) or c.shape != (d, d):
        raise ValueError(f"hessian and noise_cov must both be square of the same size, got {h.shape} and {c.shape}.")
    if not (np.allclose(h, h.T) and np.allclose(c, c.T)):
        raise ValueError("hessian and noise_cov must be symmetric.")
    rates = _as_array(lr, "lr")
    if rates.ndim == 0:
        rates = np.full(d, float(rates))
    if rates.shape != (d,) or (rates <= 0).any():
        raise ValueError(f"lr must be a positive number or a positive vector of length {d}.")
    p = np.diag(rates)
    ph = p @ h
    q = p @ c @ p
    if method == "continuous":
        if np.linalg.eigvals(ph).real.min() <= 0:
            raise ValueError("the SDE has no stationary distribution: the Hessian must be positive definite.")
        s = linalg.solve_continuous_lyapunov(ph, q)
    elif method == "discrete":
        a = np.eye(d) - ph
        radius = np.abs(np.linalg.eigvals(a)).max()
        if radius >= 1:
            raise ValueError(
                f"the spectral radius of I - lr * H is {radius:.4g} >= 1: SGD diverges with these rates "
                "(for a scalar rate, lr must be < 2 / largest Hessian eigenvalue)."
            )
        s = linalg.solve_discrete_lyapunov(a, q)
    else:
        raise ValueError(f"method must be 'discrete' or 'continuous', got {method!r}.")
    return 0.5 * (s + s.T)


def noisy_sgd_step(theta, grad_L, lr, noise_std=None, noise_chol=None, generator=None):
    r"""One step of SGD with additive Gaussian gradient noise, for every chain (row of ``theta``).

    .. math::

        \theta \leftarrow \theta - \eta \odot \big(\nabla L(\theta) + \varepsilon\big), \qquad
        \varepsilon = \sigma \odot \xi \ \text{ or }\ \varepsilon = A\xi \ (AA^\top = C), \qquad \xi \sim \mathcal N(0, I).

    Args:
        theta: the chains ``(num_chains, dim)``; not modified.
        grad_L: ``theta -> grad L(theta)``, same shape.
        lr: :math:`\eta`, a number or per-parameter rates ``(dim,)`` (a tensor).
        noise_std: :math:`\sigma`, a number or a tensor ``(dim,)``; or, instead,
        noise_chol: the Cholesky factor :math:`A` of a full noise covariance :math:`C`, ``(dim, dim)``.
        generator: the ``torch.Generator`` that draws :math:`\xi`.

    Returns:
        The chains after the step (a new tensor).
    """
    g = grad_L(theta)
    xi = torch.randn(theta.shape, generator=generator, dtype=theta.dtype, device=theta.device)
    eps = xi.mul_(noise_std) if noise_chol is None else xi @ noise_chol.T  # the gradient noise
    update = eps.add_(g)  # grad L(theta) + eps
    if not torch.is_tensor(lr) or lr.dim() == 0:
        return torch.add(theta, update, alpha=-float(lr))  # theta - eta (grad L + eps)
    return torch.addcmul(theta, update, lr, value=-1.0)  # per-parameter eta


def noisy_sgd(
    grad_L: Callable[[torch.Tensor], torch.Tensor],
    theta0: torch.Tensor,
    lr,
    num_steps: int,
    noise_std=None,
    noise_cov=None,
    generator: torch.Generator | None = None,
    *,
    thin: int | None = None,
    return_trajectory: bool = False,
):
    r"""SGD with additive Gaussian gradient noise, many independent chains at once.

    .. math::

        \theta_{k+1} = \theta_k - \eta \odot \big(\nabla L(\theta_k) + \varepsilon_k\big), \qquad
        \varepsilon_k \sim \mathcal N(0, C),

    with :math:`C = \operatorname{diag}(\sigma^2)` from ``noise_std`` or a full ``noise_cov``; ``lr`` may
    be per-parameter. Each row of ``theta0`` is a chain. The model problem of the chapter "SGD as an
    SDE": with :math:`C = \sigma^2 I` it is the Euler-Maruyama scheme (``bdk.langevin.euler_maruyama``) with
    step :math:`\eta` at temperature :math:`\eta\sigma^2/2` :cite:p:`mandt2017sgd`.

    Args:
        grad_L: maps ``(num_chains, dim)`` to the gradient of the loss, same shape.
        theta0: initial parameters, ``(num_chains, dim)``; the run uses its device and dtype.
        lr: :math:`\eta > 0`, a number or per-parameter rates of shape ``(dim,)``.
        num_steps: number of SGD steps.
        noise_std: :math:`\sigma`, a number or shape ``(dim,)`` (independent noise per coordinate).
        noise_cov: a full noise covariance ``(dim, dim)`` instead of ``noise_std``.
        generator: optional ``torch.Generator`` on ``theta0``'s device.
        thin: keep every ``thin``-th state in the trajectory (needs ``return_trajectory=True``).
        return_trajectory: also return the states after steps ``0, thin, 2 thin, ...``.

    Returns:
        The final parameters, or ``(final, trajectory)`` with ``return_trajectory=True``.

    Raises:
        ValueError: for bad shapes or values (exactly one of ``noise_std`` / ``noise_cov`` is needed).
        FloatingPointError: if the iterates become non-finite (the message names the steps).
    """
    _check_particles(theta0, "theta0")
    num_steps = _check_count(num_steps, "num_steps")
    thin = _check_thin(thin, return_trajectory)
    _check_generator(generator, theta0)
    dim = theta0.shape[1]
    like = dict(device=theta0.device, dtype=theta0.dtype)
    lr_t = torch.as_tensor(_as_array(lr, "lr"), **like)
    if lr_t.dim() > 1 or (lr_t.dim() == 1 and lr_t.numel() != dim) or (lr_t <= 0).any():
        raise ValueError(f"lr must be a positive number or a positive vector of length {dim}.")
    if (noise_std is None) == (noise_cov is None):
        raise ValueError("pass exactly one of noise_std (per-coordinate) or noise_cov (a full covariance).")
    if noise_std is not None:
        std = torch.as_tensor(_as_array(noise_std, "noise_std"), **like)
        if std.dim() > 1 or (std.dim() == 1 and std.numel() != dim) or (std < 0).any():
            raise ValueError(f"noise_std must be a non-negative number or vector of length {dim}.")
        chol = None
    else:
        cov = np.atleast_2d(_as_array(noise_cov, "noise_cov"))
        if cov.shape != (dim, dim) or not np.allclose(cov, cov.T):
            raise ValueError(f"noise_cov must be a symmetric ({dim}, {dim}) matrix.")
        try:
            chol = torch.as_tensor(np.linalg.cholesky(cov), **like)
        except np.linalg.LinAlgError as err:
            raise ValueError("noise_cov must be positive definite.") from err
        std = None
    def checked_grad(theta):  # the first step checks the shape of grad_L(theta)
        g = grad_L(theta)
        if not isinstance(g, torch.Tensor) or g.shape != theta.shape:
            raise ValueError(f"grad_L must return a tensor of shape {tuple(theta.shape)}.")
        return g

    def step(theta, k):
        return noisy_sgd_step(theta, checked_grad if k == 1 else grad_L, lr_t, std, chol, generator)

    def check(theta, first, last):
        if not bool(torch.isfinite(theta).all()):
            raise FloatingPointError(
                f"noisy_sgd: the iterates became NaN or infinite between step {first} and {last}; "
                "the learning rate is too large (lr * curvature must stay below 2)."
            )

    return run_chains(step, theta0.detach().clone(), num_steps, thin=thin, return_trajectory=return_trajectory,
                      check=check, desc="noisy_sgd")


def _check_regression(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor of shape (num_data, dim).")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape (num_data,) = ({x.shape[0]},).")


def least_squares_gradient_noise_covariance(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, batch_size: int) -> torch.Tensor:
    r"""Covariance of the minibatch gradient of least squares at ``w`` (batches drawn with replacement).

    For :math:`L(w) = \frac{1}{2N}\sum_i (x_i^\top w - y_i)^2` the per-example gradients are
    :math:`g_i = x_i (x_i^\top w - y_i)`, and a minibatch of :math:`B` indices drawn uniformly with
    replacement has gradient noise of covariance

    .. math::

        C(w) = \frac1B\Big(\frac1N \sum_i g_i g_i^\top - \bar g \bar g^\top\Big), \qquad \bar g = \nabla L(w).

    Introduced in the chapter "SGD as an SDE".

    Args:
        x: inputs ``(N, d)``; y: targets ``(N,)``; w: parameters ``(d,)``; batch_size: :math:`B \ge 1`.

    Returns:
        :math:`C(w)`, ``(d, d)``, in float64.
    """
    _check_regression(x, y)
    batch_size = _check_count(batch_size, "batch_size", 1)
    x, y, w = x.double(), y.double(), torch.as_tensor(w, dtype=torch.float64, device=x.device).reshape(-1)
    g = x * (x @ w - y)[:, None]
    mean = g.mean(0)
    return ((g.T @ g) / x.shape[0] - torch.outer(mean, mean)) / batch_size


def minibatch_sgd_least_squares(
    x: torch.Tensor,
    y: torch.Tensor,
    w0: torch.Tensor,
    lr: float,
    batch_size: int,
    num_steps: int,
    generator: torch.Generator | None = None,
    *,
    thin: int | None = None,
    return_trajectory: bool = False,
):
    r"""Minibatch SGD on least squares, many independent chains at once (each draws its own minibatches).

    .. math::

        w_{k+1} = w_k - \frac{\eta}{B} \sum_{i \in S_k} x_i\,(x_i^\top w_k - y_i),

    the SGD of :math:`L(w) = \frac{1}{2N}\sum_i (x_i^\top w - y_i)^2` with minibatches :math:`S_k` of
    :math:`B` indices drawn uniformly *with replacement*, independently per step and per chain (so the
    gradient noise has exactly the covariance :func:`least_squares_gradient_noise_covariance`). The noise
    here comes from the data, not from an added Gaussian. Introduced in the chapter "SGD as an SDE".

    Args:
        x: inputs ``(N, d)``; y: targets ``(N,)``, on the device of the run.
        w0: initial parameters ``(num_chains, d)``, same device and dtype as ``x``.
        lr: :math:`\eta > 0`.
        batch_size: :math:`B \ge 1`.
        num_steps: number of steps.
        generator: optional ``torch.Generator`` on the device of ``x``.
        thin, return_trajectory: as in :func:`noisy_sgd`.

    Returns:
        The final parameters ``(num_chains, d)``, or ``(final, trajectory)``.
    """
    _check_regression(x, y)
    _check_particles(w0, "w0")
    if w0.shape[1] != x.shape[1] or w0.device != x.device or w0.dtype != x.dtype:
        raise ValueError(f"w0 must have shape (num_chains, {x.shape[1]}) and x's device and dtype.")
    lr = _check_positive(lr, "lr")
    batch_size = _check_count(batch_size, "batch_size", 1)
    num_steps = _check_count(num_steps, "num_steps")
    thin = _check_thin(thin, return_trajectory)
    _check_generator(generator, w0)
    num_chains, n = w0.shape[0], x.shape[0]

    def step(w, k):
        idx = torch.randint(n, (num_chains, batch_size), generator=generator, device=x.device)
        xb, yb = x[idx], y[idx]  # (chains, B, d), (chains, B)
        residual = torch.einsum("cbd,cd->cb", xb, w) - yb
        return w - (lr / batch_size) * torch.einsum("cbd,cb->cd", xb, residual)

    def check(w, first, last):
        if not bool(torch.isfinite(w).all()):
            raise FloatingPointError(
                f"minibatch_sgd_least_squares: the iterates became NaN or infinite between step "
                f"{first} and {last}; reduce lr (it must stay below 2 / the largest Hessian eigenvalue)."
            )

    return run_chains(step, w0.detach().clone(), num_steps, thin=thin, return_trajectory=return_trajectory,
                      check=check, desc="minibatch_sgd_least_squares")


def least_squares_sgd_stationary_covariance(x: torch.Tensor, y: torch.Tensor, lr: float, batch_size: int) -> np.ndarray:
    r"""The exact stationary covariance of :func:`minibatch_sgd_least_squares` (no SDE approximation).

    With :math:`\delta = w - w^*`, :math:`H_i = x_i x_i^\top`, :math:`H = \frac1N\sum_i H_i` and the minibatch
    Hessian :math:`H_S = \frac1B\sum_{i\in S} H_i`, one step is
    :math:`\delta' = (I - \eta H_S)\,\delta - \eta\, g_S(w^*)`. The minibatch is independent of
    :math:`\delta` and :math:`\mathbb E[\delta] = 0` at stationarity, so the cross terms vanish and

    .. math::

        S = (I - \eta H) S (I - \eta H) + \frac{\eta^2}{B}\Big(\frac1N\sum_i H_i S H_i - H S H\Big) + \eta^2 C(w^*),

    a linear equation for :math:`S` solved exactly (size :math:`d^2`). Compared with the discrete Lyapunov
    equation of :func:`stationary_covariance` it keeps the *state-dependent* part of the noise (the
    minibatch Hessian's fluctuation). Introduced in the chapter "SGD as an SDE".

    Args:
        x: inputs ``(N, d)``; y: targets ``(N,)``; lr: :math:`\eta`; batch_size: :math:`B`.

    Returns:
        :math:`S`, a float64 NumPy array ``(d, d)``.

    Raises:
        ValueError: if the second moment of the iteration diverges for this ``lr`` and ``batch_size``.
    """
    _check_regression(x, y)
    lr = _check_positive(lr, "lr")
    batch_size = _check_count(batch_size, "batch_size", 1)
    xd = x.detach().double().cpu().numpy()
    yd = y.detach().double().cpu().numpy()
    n, d = xd.shape
    if d > 40:
        raise ValueError(f"the exact solve has size d^2 = {d * d}; use at most 40 parameters.")
    w_star = np.linalg.lstsq(xd, yd, rcond=None)[0]
    h = xd.T @ xd / n
    c = least_squares_gradient_noise_covariance(x, y, torch.from_numpy(w_star), batch_size).cpu().numpy()
    a = np.eye(d) - lr * h
    # vec(A S B) = (A kron B^T) vec(S) for row-major vec; all matrices here are symmetric
    eh = np.einsum("ni,nj,nk,nl->ijkl", xd, xd, xd, xd, optimize=True).reshape(d * d, d * d) / n
    op = np.kron(a, a) + (lr**2 / batch_size) * (eh - np.kron(h, h))
    radius = np.abs(np.linalg.eigvals(op)).max()
    if radius >= 1:
        raise ValueError(
            f"the second moment of minibatch SGD diverges (spectral radius {radius:.4g} >= 1); reduce lr or increase batch_size."
        )
    s = np.linalg.solve(np.eye(d * d) - op, lr**2 * c.reshape(-1)).reshape(d, d)
    return 0.5 * (s + s.T)

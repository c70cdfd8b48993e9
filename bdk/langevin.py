r"""Langevin dynamics, its Fokker-Planck equation and the Metropolis correction.

Introduced in the chapter "Langevin dynamics and its stationary distribution" (``book/langevin.ipynb``).

The overdamped Langevin diffusion at temperature :math:`T` on a potential :math:`U` is

.. math::

    \mathrm d\theta = -\nabla U(\theta)\,\mathrm dt + \sqrt{2T}\,\mathrm dW_t ,

whose stationary density is the Gibbs density :math:`p_T(\theta) \propto e^{-U(\theta)/T}`
:cite:p:`pavliotis2014stochastic`. Its Euler-Maruyama discretisation with time step :math:`h` is

.. math::

    \theta \leftarrow \theta - h\,\nabla U(\theta) + \sqrt{2Th}\;\xi, \qquad \xi \sim \mathcal N(0, I),

which is the SGLD step of ``bdk.samplers.SGLD`` with ``lr = 2h``
(:math:`\theta \leftarrow \theta - \tfrac{\mathrm{lr}}{2}\nabla U + \sqrt{\mathrm{lr}\,T}\,\xi`); see the book's
conventions page (``book/conventions.md``, "The one scaling convention").

This module holds

* potentials with ``U(x)``, ``grad_U(x)``, exact normalisers and (where possible) exact samplers:
  :class:`DoubleWell`, :class:`Gaussian`, :class:`GaussianMixture`, :class:`Banana`;
* one step of each sampler, the kernels :func:`euler_maruyama_step`, :func:`mala_step` and
  :func:`hmc_step`, and the one loop that runs chains on plain tensors, :func:`run_chains`
  (burn-in, thinning, trajectories, the checks for non-finite values, progress);
* the samplers built from them, which move a whole tensor of particles ``(num_particles, dim)`` at
  once, on any device: :func:`euler_maruyama`, :func:`mala` and :func:`hmc`;
* :func:`fokker_planck_1d`, a mass-conserving, positivity-preserving finite-volume solver of the
  Fokker-Planck equation, with its stability limit :func:`fokker_planck_max_dt`;
* exact references for tests and figures: :func:`gibbs_bin_probabilities`,
  :func:`euler_maruyama_stationary_density_1d` (the stationary law of the *discretised* chain), and the
  histogram distance :func:`histogram_tv_distance` with its sampling distribution under exact
  sampling, :func:`tv_null_moments`.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from scipy import linalg

from .cache import progress as _progress

__all__ = [
    "Potential",
    "DoubleWell",
    "Gaussian",
    "GaussianMixture",
    "Banana",
    "run_chains",
    "euler_maruyama_step",
    "mala_step",
    "hmc_step",
    "euler_maruyama",
    "mala",
    "hmc",
    "fokker_planck_1d",
    "fokker_planck_max_dt",
    "euler_maruyama_stationary_density_1d",
    "gibbs_bin_probabilities",
    "histogram_tv_distance",
    "tv_null_moments",
]

_NONFINITE_CHECK_EVERY = 100


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------


def _check_particles(x: torch.Tensor, name: str = "x0") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (num_particles, dim), got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype (e.g. torch.float32), got {x.dtype}.")
    if x.dim() != 2:
        hint = " For one-dimensional particles use x0[:, None]." if x.dim() == 1 else ""
        raise ValueError(f"{name} must have shape (num_particles, dim), got shape {tuple(x.shape)}.{hint}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one particle of dimension >= 1, got shape {tuple(x.shape)}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values.")


def _check_positive(value, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}.")
    return value


def _check_finite(value, name: str) -> float:
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value}.")
    return float(value)


def _check_count(value, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}.")
    return int(value)


def _check_generator(generator: torch.Generator | None, x: torch.Tensor) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
    if generator.device.type != x.device.type:
        raise ValueError(
            f"generator lives on {generator.device} but the particles are on {x.device}; "
            f"create it with torch.Generator(device={str(x.device)!r}).manual_seed(seed)."
        )


def _check_thin(thin, return_trajectory: bool) -> int:
    if thin is None:
        return 1
    thin = _check_count(thin, "thin", minimum=1)
    if not return_trajectory:
        raise ValueError("thin only applies to the returned trajectory; pass return_trajectory=True as well.")
    return thin


# ----------------------------------------------------------------------------------------------
# potentials
# ----------------------------------------------------------------------------------------------


class Potential:
    r"""A potential :math:`U(x)` on :math:`\mathbb R^d` with its Gibbs density :math:`p_T \propto e^{-U/T}`.

    Subclasses implement :meth:`U` (and, for speed, :meth:`grad_U`; the default uses autograd).
    ``x`` always has shape ``(num_particles, dim)``; ``U`` returns shape ``(num_particles,)`` and
    ``grad_U`` returns the shape of ``x``. Parameters are stored in float64 and follow ``x``'s
    device and dtype. Introduced in the chapter "Langevin dynamics and its stationary distribution".

    Attributes:
        dim: the dimension :math:`d`.
    """

    dim: int = 1

    def __init__(self) -> None:
        self._cast_cache: dict = {}

    # -- parameters follow the particles' device and dtype ------------------------------------
    def _p(self, name: str, x: torch.Tensor) -> torch.Tensor:
        key = (name, x.device, x.dtype)
        cached = self._cast_cache.get(key)
        if cached is None:
            cached = getattr(self, name).to(device=x.device, dtype=x.dtype)
            self._cast_cache[key] = cached
        return cached

    def _check_x(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects x of shape (num_particles, {self.dim}), got {shape}.")

    # -- the potential -------------------------------------------------------------------------
    def U(self, x: torch.Tensor) -> torch.Tensor:
        """The potential at each particle, shape ``(num_particles,)``."""
        raise NotImplementedError

    def grad_U(self, x: torch.Tensor) -> torch.Tensor:
        """The gradient of :meth:`U` at each particle, shape ``(num_particles, dim)`` (autograd by default)."""
        self._check_x(x)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.U(xr).sum(), xr)
        return g

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.U(x)

    # -- the Gibbs density -------------------------------------------------------------------
    def log_normaliser(self, temperature: float = 1.0) -> float:
        r""":math:`\log Z_T = \log \int e^{-U(x)/T}\,\mathrm dx` (closed form, or quadrature in 1-D).

        Raises:
            NotImplementedError: where no exact normaliser is available.
        """
        temperature = _check_positive(temperature, "temperature")
        if self.dim == 1:
            return _log_normaliser_1d(self, temperature)
        raise NotImplementedError(
            f"{type(self).__name__} in {self.dim} dimensions has no exact normaliser at temperature={temperature}."
        )

    def log_density(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        r"""The normalised log Gibbs density :math:`-U(x)/T - \log Z_T`, shape ``(num_particles,)``."""
        return -self.U(x) / temperature - self.log_normaliser(temperature)

    def density(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        r"""The normalised Gibbs density :math:`e^{-U(x)/T} / Z_T`, shape ``(num_particles,)``."""
        return torch.exp(self.log_density(x, temperature))

    def sample(
        self,
        num_samples: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Independent draws from the Gibbs density, shape ``(num_samples, dim)``.

        In one dimension (the default implementation) by inversion of the CDF tabulated on 200,001
        points across the support, which is exact up to a total-variation error below ``1e-6``
        (far below the sampling noise of any number of draws used in the book); subclasses with a
        closed-form sampler override it.

        Raises:
            NotImplementedError: for potentials of dimension > 1 without an exact sampler.
        """
        if self.dim != 1:
            raise NotImplementedError(f"{type(self).__name__} has no exact sampler.")
        num_samples = _check_count(num_samples, "num_samples", 1)
        temperature = _check_positive(temperature, "temperature")
        x, cdf = _tabulated_cdf_1d(self, temperature)
        dev = generator.device if generator is not None else torch.device("cpu")
        uniform = torch.rand(num_samples, generator=generator, dtype=torch.float64, device=dev).cpu().numpy()
        draws = np.interp(uniform, cdf, x)
        out = torch.from_numpy(draws)[:, None]
        return out.to(device=device if device is not None else dev, dtype=dtype)


def _support_1d(potential: Potential, temperature: float):
    """A finite range outside which exp(-(U - U_min)/T) < e^-60, the grid that found it, and U/T on it."""
    half_width = 10.0
    for _ in range(12):
        grid = torch.linspace(-half_width, half_width, 20_001, dtype=torch.float64)
        with torch.no_grad():
            u = potential.U(grid[:, None]).numpy() / temperature
        u_min = float(u.min())
        if u[0] - u_min > 60 and u[-1] - u_min > 60:
            break
        half_width *= 2
    else:
        raise ValueError(f"exp(-U/T) of {type(potential).__name__} does not decay; it has no normaliser.")
    inside = np.nonzero(u - u_min < 60)[0]
    lo, hi = grid[max(inside[0] - 1, 0)].item(), grid[min(inside[-1] + 1, len(grid) - 1)].item()
    return lo, hi, grid, u, u_min


def _tabulated_cdf_1d(potential: Potential, temperature: float):
    cache = potential.__dict__.setdefault("_cdf_cache", {})
    if temperature not in cache:
        lo, hi, _, _, _ = _support_1d(potential, temperature)
        x = torch.linspace(lo, hi, 200_001, dtype=torch.float64)
        with torch.no_grad():
            u = potential.U(x[:, None]) / temperature
        dens = torch.exp(-(u - u.min())).numpy()
        # trapezoid rule: the CDF is exact at the nodes to O(dx^2), linear in between
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]))])
        cache[temperature] = (x.numpy(), cdf / cdf[-1])
    return cache[temperature]


def _log_normaliser_1d(potential: Potential, temperature: float) -> float:
    """log of the integral of exp(-U/T) over the real line, float64.

    Composite Gauss-Legendre quadrature (4,000 panels of 16 nodes) over the range outside which
    exp(-(U - U_min)/T) < e^-60; for the smooth potentials here this is exact to about 1e-14.
    """
    cache = potential.__dict__.setdefault("_log_z_cache", {})
    if temperature in cache:
        return cache[temperature]
    lo, hi, _, _, u_min = _support_1d(potential, temperature)
    nodes, weights = np.polynomial.legendre.leggauss(16)
    panels = np.linspace(lo, hi, 4001)
    half = (panels[1:] - panels[:-1]) / 2
    x = ((panels[:-1] + half)[:, None] + half[:, None] * nodes[None]).reshape(-1)
    with torch.no_grad():
        u = potential.U(torch.from_numpy(x)[:, None]).numpy() / temperature
    integral = float((np.exp(-(u - u_min)).reshape(-1, 16) * weights[None] * half[:, None]).sum())
    cache[temperature] = math.log(integral) - u_min
    return cache[temperature]


class DoubleWell(Potential):
    r"""The one-dimensional double well :math:`U(x) = a\,(x^2 - 1)^2 + c\,x`.

    ``height`` :math:`a` is the barrier between the wells at :math:`x = \pm 1` (for ``tilt`` :math:`c = 0`);
    a positive ``tilt`` makes the left well deeper. The normaliser is computed by quadrature.
    Introduced in the chapter "Langevin dynamics and its stationary distribution".

    Args:
        height: the barrier height :math:`a > 0`.
        tilt: the linear tilt :math:`c`.
    """

    dim = 1

    def __init__(self, height: float = 1.0, tilt: float = 0.0):
        super().__init__()
        self.height = _check_positive(height, "height")
        self.tilt = _check_finite(tilt, "tilt")

    def __repr__(self) -> str:
        return f"DoubleWell(height={self.height}, tilt={self.tilt})"

    def U(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        x = x[:, 0]
        return self.height * (x * x - 1) ** 2 + self.tilt * x

    def grad_U(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        return 4 * self.height * x * (x * x - 1) + self.tilt


def _as_float64(value, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float64).detach().cpu().clone()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite.")
    return t


class Gaussian(Potential):
    r"""The Gaussian potential :math:`U(x) = \tfrac12 (x - m)^\top \Sigma^{-1} (x - m)`.

    Its Gibbs density at temperature :math:`T` is :math:`\mathcal N(m, T\Sigma)`, with exact normaliser and
    sampler. Introduced in the chapter "Langevin dynamics and its stationary distribution".

    Args:
        mean: the mean :math:`m`, shape ``(dim,)``.
        cov: the covariance :math:`\Sigma` (at :math:`T = 1`), shape ``(dim, dim)``, symmetric positive definite;
            a scalar or a ``(dim,)`` vector is read as a (diagonal) variance.
    """

    def __init__(self, mean, cov=1.0):
        super().__init__()
        self.mean = _as_float64(mean, "mean").reshape(-1)
        self.dim = self.mean.numel()
        cov = _as_float64(cov, "cov")
        if cov.dim() == 0:
            cov = cov * torch.eye(self.dim, dtype=torch.float64)
        elif cov.dim() == 1:
            cov = torch.diag(cov)
        if cov.shape != (self.dim, self.dim):
            raise ValueError(f"cov must have shape ({self.dim}, {self.dim}) to match mean, got {tuple(cov.shape)}.")
        if not torch.allclose(cov, cov.T):
            raise ValueError("cov must be symmetric.")
        try:
            self.chol = torch.linalg.cholesky(cov)
        except RuntimeError as err:
            raise ValueError("cov must be positive definite.") from err
        self.cov = cov
        self.precision = torch.cholesky_inverse(self.chol)
        self._logdet = 2 * torch.log(torch.diagonal(self.chol)).sum().item()

    def __repr__(self) -> str:
        return f"Gaussian(mean={self.mean.tolist()}, cov={self.cov.tolist()})"

    def U(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        d = x - self._p("mean", x)
        return 0.5 * ((d @ self._p("precision", x)) * d).sum(-1)

    def grad_U(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        return (x - self._p("mean", x)) @ self._p("precision", x)

    def log_normaliser(self, temperature: float = 1.0) -> float:
        temperature = _check_positive(temperature, "temperature")
        return 0.5 * self.dim * math.log(2 * math.pi * temperature) + 0.5 * self._logdet

    def sample(self, num_samples, temperature=1.0, generator=None, device=None, dtype=torch.float32):
        num_samples = _check_count(num_samples, "num_samples", 1)
        temperature = _check_positive(temperature, "temperature")
        z = torch.randn(num_samples, self.dim, generator=generator, dtype=torch.float64,
                        device=generator.device if generator is not None else "cpu")
        x = self.mean.to(z.device) + math.sqrt(temperature) * z @ self.chol.T.to(z.device)
        return x.to(device=device if device is not None else x.device, dtype=dtype)


class GaussianMixture(Potential):
    r"""A Gaussian mixture, :math:`U(x) = -\log \sum_k w_k\, \mathcal N(x; m_k, \Sigma_k)`.

    At temperature 1 the Gibbs density is the mixture itself (exact normaliser and sampler); at other
    temperatures the normaliser is known by quadrature in 1-D only. Introduced in the chapter
    "Langevin dynamics and its stationary distribution".

    Args:
        weights: mixture weights, shape ``(K,)``, positive (normalised to sum to one).
        means: component means, shape ``(K, dim)`` (or ``(K,)`` for dim 1).
        covs: component covariances, shape ``(K, dim, dim)``; ``(K,)`` or a scalar is read as an
            isotropic variance per component.
    """

    def __init__(self, weights, means, covs=1.0):
        super().__init__()
        weights = _as_float64(weights, "weights").reshape(-1)
        if (weights <= 0).any():
            raise ValueError("weights must be positive.")
        self.weights = weights / weights.sum()
        means = _as_float64(means, "means")
        if means.dim() == 1:
            means = means[:, None]
        if means.shape[0] != self.weights.numel():
            raise ValueError(f"means has {means.shape[0]} rows but there are {self.weights.numel()} weights.")
        self.means = means
        k, self.dim = means.shape
        covs = _as_float64(covs, "covs")
        if covs.dim() == 0:
            covs = covs.expand(k)
        if covs.dim() == 1:
            if covs.numel() != k:
                raise ValueError(f"covs of shape {tuple(covs.shape)} does not match {k} components.")
            covs = covs[:, None, None] * torch.eye(self.dim, dtype=torch.float64)
        if covs.shape != (k, self.dim, self.dim):
            raise ValueError(f"covs must have shape ({k}, {self.dim}, {self.dim}), got {tuple(covs.shape)}.")
        try:
            self.chols = torch.linalg.cholesky(covs)
        except RuntimeError as err:
            raise ValueError("every component covariance must be symmetric positive definite.") from err
        self.covs = covs
        self.precisions = torch.cholesky_inverse(self.chols)
        logdets = 2 * torch.log(torch.diagonal(self.chols, dim1=-2, dim2=-1)).sum(-1)
        self.log_consts = torch.log(self.weights) - 0.5 * logdets - 0.5 * self.dim * math.log(2 * math.pi)

    def __repr__(self) -> str:
        return f"GaussianMixture(weights={self.weights.tolist()}, means={self.means.tolist()})"

    def _component_terms(self, x: torch.Tensor):
        d = x[:, None, :] - self._p("means", x)[None]  # (n, K, dim)
        pd = torch.einsum("kij,nkj->nki", self._p("precisions", x), d)
        return self._p("log_consts", x)[None] - 0.5 * (d * pd).sum(-1), pd

    def U(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        terms, _ = self._component_terms(x)
        return -torch.logsumexp(terms, dim=1)

    def grad_U(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        terms, pd = self._component_terms(x)
        resp = torch.softmax(terms, dim=1)  # responsibilities r_k(x)
        return (resp[..., None] * pd).sum(1)

    def log_normaliser(self, temperature: float = 1.0) -> float:
        temperature = _check_positive(temperature, "temperature")
        if temperature == 1.0:
            return 0.0
        return super().log_normaliser(temperature)

    def sample(self, num_samples, temperature=1.0, generator=None, device=None, dtype=torch.float32):
        num_samples = _check_count(num_samples, "num_samples", 1)
        if temperature != 1.0:
            raise NotImplementedError("GaussianMixture samples exactly only at temperature=1.")
        dev = generator.device if generator is not None else torch.device("cpu")
        k = torch.multinomial(self.weights.to(dev), num_samples, replacement=True, generator=generator)
        z = torch.randn(num_samples, self.dim, generator=generator, dtype=torch.float64, device=dev)
        x = self.means.to(dev)[k] + torch.einsum("nij,nj->ni", self.chols.to(dev)[k], z)
        return x.to(device=device if device is not None else x.device, dtype=dtype)


class Banana(Potential):
    r"""A two-dimensional banana: a Gaussian bent along a parabola.

    .. math::

        U(x) = \frac{x_1^2}{2 s_1^2} + \frac{\big(x_2 - b\,(x_1^2 - s_1^2)\big)^2}{2 s_2^2}.

    At temperature :math:`T`, :math:`x_1 \sim \mathcal N(0, T s_1^2)` and
    :math:`x_2 \mid x_1 \sim \mathcal N(b(x_1^2 - s_1^2), T s_2^2)`, so the normaliser
    :math:`Z_T = 2\pi T s_1 s_2` and exact sampling are available at every temperature.
    Introduced in the chapter "Langevin dynamics and its stationary distribution".

    Args:
        s1: the scale :math:`s_1 > 0` along the first coordinate.
        s2: the scale :math:`s_2 > 0` across the parabola.
        b: the bend :math:`b`.
    """

    dim = 2

    def __init__(self, s1: float = 1.0, s2: float = 0.5, b: float = 0.5):
        super().__init__()
        self.s1 = _check_positive(s1, "s1")
        self.s2 = _check_positive(s2, "s2")
        self.b = _check_finite(b, "b")

    def __repr__(self) -> str:
        return f"Banana(s1={self.s1}, s2={self.s2}, b={self.b})"

    def U(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        x1, x2 = x[:, 0], x[:, 1]
        u = x2 - self.b * (x1 * x1 - self.s1**2)
        return 0.5 * x1 * x1 / self.s1**2 + 0.5 * u * u / self.s2**2

    def grad_U(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        x1, x2 = x[:, 0], x[:, 1]
        u = (x2 - self.b * (x1 * x1 - self.s1**2)) / self.s2**2
        return torch.stack([x1 / self.s1**2 - 2 * self.b * x1 * u, u], dim=1)

    def log_normaliser(self, temperature: float = 1.0) -> float:
        temperature = _check_positive(temperature, "temperature")
        return math.log(2 * math.pi * temperature * self.s1 * self.s2)

    def sample(self, num_samples, temperature=1.0, generator=None, device=None, dtype=torch.float32):
        num_samples = _check_count(num_samples, "num_samples", 1)
        temperature = _check_positive(temperature, "temperature")
        dev = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(num_samples, 2, generator=generator, dtype=torch.float64, device=dev) * math.sqrt(temperature)
        x1 = self.s1 * z[:, 0]
        x2 = self.b * (x1 * x1 - self.s1**2) + self.s2 * z[:, 1]
        x = torch.stack([x1, x2], dim=1)
        return x.to(device=device if device is not None else x.device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# samplers
# ----------------------------------------------------------------------------------------------


def _resolve_grad(grad_U) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(grad_U, Potential):
        return grad_U.grad_U
    if not callable(grad_U):
        raise TypeError(f"grad_U must be a callable x -> grad U(x) or a Potential, got {type(grad_U).__name__}.")
    return grad_U


def _checked_grad(grad_fn, x: torch.Tensor) -> torch.Tensor:
    g = grad_fn(x)
    if not isinstance(g, torch.Tensor) or g.shape != x.shape:
        shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
        raise ValueError(f"grad_U(x) must return a tensor of the particles' shape {tuple(x.shape)}, got {shape}.")
    return g


# A chain whose particles reached this many times their initial scale (at least 1) has diverged.
_DIVERGED_FACTOR = 1e6


def _has_diverged(reach: float, start: float) -> bool:
    """Whether positions of size ``reach`` mean the chain diverged from positions of size ``start``."""
    return reach > _DIVERGED_FACTOR * max(1.0, start)


def _noise_generator(generator: torch.Generator | None, x: torch.Tensor) -> torch.Generator | None:
    """The generator that draws a run's noise: ``generator``, else the default one of ``x``'s device
    (``None`` where it is not known, and the noise of the run cannot be replayed)."""
    if generator is not None:
        return generator
    if x.device.type == "cpu":
        return torch.default_generator
    if x.device.type == "cuda":
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    return None


class _Checkpoint:
    """The particles after a checked step and the state of the noise generator then: what a replay needs."""

    def __init__(self, step: int, x: torch.Tensor, rng: torch.Generator | None):
        self.step = step
        self.x = x.clone()
        self.rng_state = rng.get_state() if rng is not None else None


def _replay_euler_maruyama(grad_fn, start: _Checkpoint, last: int, step_size: float, temperature: float,
                           generator, rng):
    """Re-run the steps after ``start`` up to ``last`` with the same kernel and noise, checking every step.

    Returns ``(step, bad, x_before, kind)`` for the first step that produced a non-finite value:
    ``bad`` marks its particles, ``x_before`` holds the particles before that step, and ``kind`` is
    ``"grad"`` (``grad_U`` was not finite at finite positions) or ``"update"`` (the step itself
    overflowed). Returns ``None`` when the replay stays finite (a ``grad_U`` that is not
    deterministic) or cannot draw the same noise. The generator is left as it was.
    """
    if temperature > 0 and (rng is None or start.rng_state is None):
        return None
    saved = rng.get_state() if rng is not None else None
    try:
        if temperature > 0:
            rng.set_state(start.rng_state)
        x = start.x.clone()
        for step in range(start.step + 1, last + 1):
            g = grad_fn(x)
            bad = ~torch.isfinite(g).all(1)
            if bool(bad.any()):
                return step, bad, x, "grad"
            new = euler_maruyama_step(x, lambda _: g, step_size, temperature, generator)
            bad = ~torch.isfinite(new).all(1)
            if bool(bad.any()):
                return step, bad, x, "update"
            x = new
    finally:
        if saved is not None:
            rng.set_state(saved)
    return None


def _nonfinite_error(sampler: str, first: int, last: int, step_size: float, found, x0: torch.Tensor) -> FloatingPointError:
    """The error for particles that became non-finite between steps ``first`` and ``last``, naming the cause.

    ``found`` is what :func:`_replay_euler_maruyama` returned. A non-finite gradient at positions that
    had not run away from ``x0`` is ``grad_U``'s fault; positions that ran away (or an update that
    overflowed) mean the step size is too large.
    """
    head = f"{sampler}: the particles became NaN or infinite between step {first} and step {last}."
    too_large = (f"The step size {step_size} is too large for this potential (explicit steps are unstable where "
                 "step_size * curvature > 2); reduce step_size.")
    if found is None:
        return FloatingPointError(
            f"{head} Re-running those steps did not reproduce it (grad_U is not deterministic, or the noise of "
            f"this device cannot be replayed), so the cause is not known: either grad_U returns NaN or inf at some "
            f"finite positions (check it), or the step size {step_size} is too large for this potential; reduce "
            "step_size if grad_U is fine."
        )
    step, bad, before, kind = found
    count, total = int(bad.sum()), bad.numel()
    first_bad = int(bad.nonzero()[0, 0])
    reach = float(before[bad].abs().max())
    start = float(x0.abs().max())
    if kind == "grad" and not _has_diverged(reach, start):
        return FloatingPointError(
            f"{head} It started at step {step}: grad_U returned NaN or infinite values for {count} of {total} "
            f"particles (the first is particle {first_bad}) at finite positions, |x| <= {reach:.3g}. The particles "
            "had not run away, so the step size is not the cause: check grad_U at those positions (a log or "
            "square root of a negative number, a division by zero, an overflow inside it)."
        )
    cause = "grad_U overflowed there" if kind == "grad" else "the step overflowed"
    return FloatingPointError(
        f"{head} It started at step {step}: the chain diverged: {count} of {total} particles had run away to "
        f"|x| = {reach:.3g} (from |x0| <= {start:.3g}) and {cause}. {too_large}"
    )


# ----------------------------------------------------------------------------------------------
# the chain driver
# ----------------------------------------------------------------------------------------------


def _positions(state) -> torch.Tensor:
    """The positions of a chain state: the state itself, or the first entry of a tuple."""
    return state[0] if isinstance(state, tuple) else state


def _finite_positions(sampler: str):
    """The default check of :func:`run_chains`: the positions must be finite."""

    def check(state, first: int, last: int) -> None:
        if not bool(torch.isfinite(_positions(state)).all()):
            raise FloatingPointError(f"{sampler}: the chains became NaN or infinite between step {first} and step {last}.")

    return check


def run_chains(
    step: Callable,
    state,
    num_steps: int,
    *,
    burn_in: int = 0,
    thin: int = 1,
    return_trajectory: bool = False,
    check: Callable | None = None,
    check_every: int = _NONFINITE_CHECK_EVERY,
    progress: bool = False,
    desc: str = "chains",
):
    r"""Run ``num_steps`` steps of a Markov chain kernel on plain tensors: the one loop under every sampler.

    :func:`euler_maruyama`, :func:`mala`, :func:`hmc` and ``bdk.sde.noisy_sgd`` are each a kernel
    (:func:`euler_maruyama_step`, :func:`mala_step`, :func:`hmc_step`, ``bdk.sde.noisy_sgd_step``) handed
    to this driver. Its contract:

    * **State.** ``state`` is a tensor of positions, one row per chain (``(num_chains, ...)``), or a tuple
      whose first entry is that tensor and whose other entries are what the kernel carries from step to
      step (for MALA and HMC, :math:`U(x)` and :math:`\nabla U(x)`). It is passed on as given: copy
      ``x0`` first if it must not change.
    * **Steps.** ``step(state, k)`` returns the state after step ``k``, for ``k = 1, ..., num_steps``
      (1-based). It may modify the state in place or return new tensors; what it needs beyond the
      state (a step size that adapts, an acceptance count) it keeps itself.
    * **Burn-in and thinning** (one meaning): steps ``1, ..., burn_in`` are burn-in; the trajectory holds
      the positions after steps ``burn_in, burn_in + thin, burn_in + 2 thin, ... <= num_steps``, each a
      copy. With ``burn_in = 0`` its first entry is the initial state; a sampler that returns only
      draws after the burn-in drops that entry.
    * **Non-finite values** (one policy): after every ``check_every``-th step and after the last,
      ``check(state, first, last)`` is called with the steps ``first..last`` since the previous check;
      it raises ``FloatingPointError`` naming the step (or steps) and the cause. The default check
      raises when the positions are not finite. One host synchronisation per check, not per step
      (``check_every=1`` checks every step).
    * **Progress**: a progress bar (``bdk.cache.progress``, titled ``desc``) with ``progress=True``.

    Args:
        step: the kernel, ``(state, k) -> state``.
        state: the initial state (see above).
        num_steps: the number of steps, ``>= burn_in``.
        burn_in: steps before the first kept state.
        thin: keep every ``thin``-th state after the burn-in.
        return_trajectory: also return the kept positions.
        check: the non-finite check, ``(state, first, last) -> None``; by default the positions must be finite.
        check_every: steps between checks.
        progress: show a progress bar.
        desc: the progress bar's title, and the sampler's name in the default check's message.

    Returns:
        The final state; with ``return_trajectory=True``, ``(final_state, trajectory)`` where
        ``trajectory`` has shape ``((num_steps - burn_in) // thin + 1, *positions.shape)``.

    Raises:
        ValueError: for counts that do not make sense.
        FloatingPointError: from ``check``.
    """
    num_steps = _check_count(num_steps, "num_steps")
    burn_in = _check_count(burn_in, "burn_in")
    thin = _check_count(thin, "thin", minimum=1)
    check_every = _check_count(check_every, "check_every", minimum=1)
    if burn_in > num_steps:
        raise ValueError(f"burn_in ({burn_in}) must not exceed num_steps ({num_steps}).")
    check = _finite_positions(desc) if check is None else check
    trajectory, kept = None, 0
    if return_trajectory:  # kept: k = burn_in, burn_in + thin, ... <= num_steps, filled in place (no list to stack)
        first = _positions(state)
        trajectory = first.new_empty(((num_steps - burn_in) // thin + 1, *first.shape))
        if burn_in == 0:
            trajectory[0].copy_(first.detach())
            kept = 1
    steps = range(1, num_steps + 1)
    if progress:
        steps = _progress(steps, desc=desc, total=num_steps)
    last_check = 0
    for k in steps:
        state = step(state, k)
        if k % check_every == 0 or k == num_steps:
            check(state, last_check + 1, k)
            last_check = k
        if return_trajectory and k >= burn_in and (k - burn_in) % thin == 0:
            trajectory[kept].copy_(_positions(state).detach())
            kept += 1
    if return_trajectory:
        return state, trajectory
    return state


# ----------------------------------------------------------------------------------------------
# the kernels: one step of each sampler
# ----------------------------------------------------------------------------------------------


def euler_maruyama_step(x, grad_U, step_size, temperature=1.0, generator=None):
    r"""One Euler-Maruyama step of the overdamped Langevin diffusion, for every particle (row of ``x``).

    .. math::

        x \leftarrow x - h\,\nabla U(x) + \sqrt{2 h T}\;\xi, \qquad \xi \sim \mathcal N(0, I).

    Args:
        x: particles ``(num_particles, dim)``; not modified.
        grad_U: ``x -> grad U(x)``, same shape.
        step_size: :math:`h > 0`; temperature: :math:`T \ge 0` (``0`` is gradient descent).
        generator: the ``torch.Generator`` that draws :math:`\xi`.

    Returns:
        The particles after the step (a new tensor).
    """
    x = torch.add(x, grad_U(x), alpha=-step_size)  # x - h grad U(x)
    if temperature > 0:
        xi = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x.add_(xi, alpha=math.sqrt(2.0 * temperature * step_size))  # + sqrt(2 h T) xi
    return x


def mala_step(x, u, grad_u, value_and_grad, step_size, temperature=1.0, generator=None):
    r"""One Metropolis-adjusted Langevin step: an Euler-Maruyama proposal and its accept/reject test.

    .. math::

        y = x - h\nabla U(x) + \sqrt{2Th}\,\xi, \qquad
        \log\alpha = -\frac{U(y) - U(x)}{T}
        - \frac{\lVert x - y + h\nabla U(y)\rVert^2 - \lVert y - x + h\nabla U(x)\rVert^2}{4Th},

    and each chain moves to :math:`y` when :math:`\log v < \log\alpha`, :math:`v \sim \mathcal U(0, 1)`.

    Args:
        x, u, grad_u: the particles ``(num_particles, dim)``, :math:`U(x)` ``(num_particles,)`` and
            :math:`\nabla U(x)`.
        value_and_grad: ``y -> (U(y), grad U(y))``.
        step_size: :math:`h > 0`; temperature: :math:`T > 0`.
        generator: the ``torch.Generator`` that draws :math:`\xi` and :math:`v`.

    Returns:
        ``(x, u, grad_u, accepted)``: the new state and a boolean tensor of the accepted proposals.
    """
    noise = math.sqrt(2.0 * temperature * step_size) * torch.randn(
        x.shape, generator=generator, dtype=x.dtype, device=x.device)  # sqrt(2Th) xi
    y = x - step_size * grad_u + noise
    u_y, grad_y = value_and_grad(y)
    forward = noise.pow(2).sum(1)  # ||y - x + h grad U(x)||^2
    backward = (x - y + step_size * grad_y).pow(2).sum(1)  # ||x - y + h grad U(y)||^2
    log_alpha = -(u_y - u) / temperature - (backward - forward) / (4 * temperature * step_size)
    v = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
    accept = torch.log(v) < log_alpha  # U(y) = +inf gives log_alpha = -inf: rejected
    x = torch.where(accept[:, None], y, x)
    u = torch.where(accept, u_y, u)
    grad_u = torch.where(accept[:, None], grad_y, grad_u)
    return x, u, grad_u, accept


def hmc_step(x, u, grad_u, value_and_grad, step_size, num_leapfrog, generator=None):
    r"""One Hamiltonian Monte Carlo transition :cite:p:`neal2011hmc`: momentum, leapfrog, accept/reject.

    With :math:`H(x, p) = U(x) + \tfrac12\lVert p\rVert^2`: draw :math:`p \sim \mathcal N(0, I)`, run
    ``num_leapfrog`` leapfrog steps

    .. math::

        p \leftarrow p - \tfrac\epsilon2\nabla U(q), \quad q \leftarrow q + \epsilon p, \quad
        p \leftarrow p - \tfrac\epsilon2\nabla U(q),

    from :math:`(q, p) = (x, p)`, and move to :math:`q` with probability :math:`\alpha = \min(1, e^{H_0 - H_1})`
    (a NaN energy is rejected).

    Args:
        x, u, grad_u: the chains ``(num_chains, dim)``, :math:`U(x)` and :math:`\nabla U(x)`.
        value_and_grad: ``q -> (U(q), grad U(q))``.
        step_size: :math:`\epsilon`, one per chain, shape ``(num_chains,)``.
        num_leapfrog: leapfrog steps :math:`L \ge 1`.
        generator: the ``torch.Generator`` for the momentum and the test.

    Returns:
        ``(x, u, grad_u, accepted, alpha)``: the new state, the accepted chains and :math:`\alpha`.
    """
    eps = step_size.unsqueeze(1)
    p = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    h0 = u + 0.5 * p.pow(2).sum(-1)
    q, grad_q = x, grad_u
    p = p - 0.5 * eps * grad_q  # half step in p
    for k in range(num_leapfrog):
        q = q + eps * p  # full step in q
        u_q, grad_q = value_and_grad(q)
        if k < num_leapfrog - 1:
            p = p - eps * grad_q  # two half steps in p merged
    p = p - 0.5 * eps * grad_q  # last half step in p
    h1 = u_q + 0.5 * p.pow(2).sum(-1)
    log_alpha = torch.nan_to_num(h0 - h1, nan=-math.inf).clamp(max=0.0)
    accept = torch.rand(x.shape[0], device=x.device, dtype=x.dtype, generator=generator).log() < log_alpha
    x = torch.where(accept.unsqueeze(1), q, x)
    u = torch.where(accept, u_q, u)
    grad_u = torch.where(accept.unsqueeze(1), grad_q, grad_u)
    return x, u, grad_u, accept, log_alpha.exp()


def euler_maruyama(
    grad_U,
    x0: torch.Tensor,
    step_size: float,
    num_steps: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    thin: int | None = None,
    return_trajectory: bool = False,
):
    r"""Simulate the overdamped Langevin diffusion with the Euler-Maruyama scheme, all particles at once.

    Each row of ``x0`` is an independent chain of

    .. math::

        \theta_{k+1} = \theta_k - h\,\nabla U(\theta_k) + \sqrt{2 T h}\;\xi_k, \qquad \xi_k \sim \mathcal N(0, I),

    the discretisation of :math:`\mathrm d\theta = -\nabla U\,\mathrm dt + \sqrt{2T}\,\mathrm dW`
    :cite:p:`kloeden1992numerical`. It is the SGLD step with learning rate ``lr = 2 * step_size``
    (:math:`\theta \leftarrow \theta - \tfrac{\mathrm{lr}}{2}\nabla U + \sqrt{\mathrm{lr}\,T}\,\xi`,
    :cite:p:`welling2011sgld`); see ``book/conventions.md``, "The one scaling convention". Its stationary
    law differs from the Gibbs density :math:`e^{-U/T}` by :math:`O(h)`; :func:`mala` removes that bias.
    ``temperature=0`` is gradient descent with rate ``step_size``. Introduced in the chapter "Langevin
    dynamics and its stationary distribution".

    Args:
        grad_U: a callable mapping particles ``(num_particles, dim)`` to :math:`\nabla U` of the same
            shape, or a :class:`Potential` (its ``grad_U`` is used).
        x0: initial particles, shape ``(num_particles, dim)``, floating point; the run happens on its
            device and in its dtype. Not modified.
        step_size: the time step :math:`h > 0`.
        num_steps: the number of steps (``0`` returns a copy of ``x0``).
        temperature: :math:`T \ge 0`.
        generator: an optional ``torch.Generator`` on the particles' device; with it the run is
            reproducible, without it the global generator is used.
        thin: keep every ``thin``-th state in the trajectory (needs ``return_trajectory=True``).
        return_trajectory: also return the states after steps ``0, thin, 2 thin, ... <= num_steps``.

    Returns:
        The final particles (same shape, device and dtype as ``x0``); with ``return_trajectory=True``
        the pair ``(final, trajectory)`` where ``trajectory[k]`` holds the particles after
        ``k * thin`` steps, shape ``(num_steps // thin + 1, num_particles, dim)``.

    Raises:
        TypeError: for a non-tensor or integer ``x0``, a non-callable ``grad_U`` or wrong argument types.
        ValueError: for a wrong shape of ``x0`` or of ``grad_U(x)``, a non-positive step size, a negative
            temperature, or a generator on another device.
        FloatingPointError: if the particles become non-finite. The message names the first step that
            produced a NaN or inf and its cause: ``grad_U`` returning NaN/inf at finite positions (check
            ``grad_U``), or particles that ran away or overflowed (reduce ``step_size``). The particles
            are checked every 100 steps; a failure is replayed from the last check with the same noise
            to find that step.
    """
    grad_fn = _resolve_grad(grad_U)
    _check_particles(x0)
    step_size = _check_positive(step_size, "step_size")
    num_steps = _check_count(num_steps, "num_steps")
    temperature = _check_positive(temperature, "temperature", allow_zero=True)
    thin = _check_thin(thin, return_trajectory)
    _check_generator(generator, x0)

    def checked_grad(x):  # the first step checks the shape of grad_U(x)
        return _checked_grad(grad_fn, x)

    def step(x, k):
        return euler_maruyama_step(x, checked_grad if k == 1 else grad_fn, step_size, temperature, generator)

    # A failure found at a check is replayed from the previous check with the same noise, to name the
    # step and its cause; a checkpoint keeps the particles and the generator's state there.
    rng = _noise_generator(generator, x0) if temperature > 0 else None
    checkpoint = _Checkpoint(0, x0.detach(), rng)

    def check(x, first, last):
        nonlocal checkpoint
        if not bool(torch.isfinite(x).all()):
            found = _replay_euler_maruyama(grad_fn, checkpoint, last, step_size, temperature, generator, rng)
            raise _nonfinite_error("euler_maruyama", first, last, step_size, found, x0)
        checkpoint = _Checkpoint(last, x, rng)

    return run_chains(step, x0.detach().clone(), num_steps, thin=thin, return_trajectory=return_trajectory,
                      check=check, desc="euler_maruyama")


def _value_and_grad(U, grad_U):
    """Return f(x) -> (U(x), grad U(x)), by the potential's methods, a given gradient, or autograd."""
    if isinstance(U, Potential):
        pot = U
        grad_fn = grad_U if grad_U is not None else pot.grad_U
        return lambda x: (pot.U(x), grad_fn(x))
    if not callable(U):
        raise TypeError(f"U must be a callable x -> U(x) of shape (num_particles,) or a Potential, got {type(U).__name__}.")
    if grad_U is not None:
        if not callable(grad_U):
            raise TypeError(f"grad_U must be callable, got {type(grad_U).__name__}.")
        return lambda x: (U(x), grad_U(x))
    return _autograd_value_and_grad(U)


def _autograd_value_and_grad(U):
    """Return f(x) -> (U(x), grad U(x)), the gradient by autograd."""

    def value_and_grad(x):
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            u = U(xr)
            (g,) = torch.autograd.grad(u.sum(), xr)
        return u.detach(), g

    return value_and_grad


def _tally_bad_proposals(y: torch.Tensor, uy: torch.Tensor, gy: torch.Tensor, out: torch.Tensor) -> None:
    """Count, without a host sync, the finite proposals whose potential or gradient is broken.

    ``out[0]`` gets the number with ``U(y)`` NaN or ``-inf``, ``out[1]`` the number with a finite
    ``U(y)`` but a non-finite ``grad_U(y)``. ``U(y) = +inf`` (zero density) is a valid rejection.
    """
    bad_u = ~(uy > -math.inf)  # NaN or -inf
    bad_g = torch.isfinite(uy) & ~torch.isfinite(gy).all(1)
    broken = torch.stack((bad_u, bad_g))
    broken &= torch.isfinite(y).all(1)
    torch.sum(broken, dim=1, out=out)


def _check_proposals(tally: torch.Tensor, first: int, num_particles: int) -> None:
    """Raise if a row of ``tally`` (one per step, from step ``first``) counts a broken proposal.

    Raises:
        FloatingPointError: naming the first such step, how many proposals, and whether ``U`` or
            ``grad_U`` is to blame.
    """
    counts = tally.tolist()  # one host sync per window of steps
    for offset, (bad_u, bad_g) in enumerate(counts):
        if bad_u or bad_g:
            break
    else:
        return
    problems = []
    if bad_u:
        problems.append(f"the potential U returned NaN or -inf at {bad_u} of {num_particles} proposals")
    if bad_g:
        problems.append(f"grad_U returned NaN or infinite values at {bad_g} of {num_particles} proposals where U is finite")
    raise FloatingPointError(
        f"mala step {first + offset}: {' and '.join(problems)} (at finite positions). MALA rejects a proposal "
        "where U = +inf (zero density), but NaN, -inf or a non-finite gradient there is a fault of U or grad_U, "
        "and rejecting those proposals silently would bias the chain. The step size is not the cause: check U "
        "and grad_U at those positions."
    )


def mala(
    U,
    x0: torch.Tensor,
    step_size: float,
    num_steps: int,
    generator: torch.Generator | None = None,
    *,
    grad_U: Callable[[torch.Tensor], torch.Tensor] | None = None,
    temperature: float = 1.0,
    thin: int | None = None,
    return_trajectory: bool = False,
):
    r"""The Metropolis-adjusted Langevin algorithm: Euler-Maruyama proposals with a Metropolis-Hastings test.

    Each row of ``x0`` is its own chain. From :math:`x` the proposal is
    :math:`y = x - h\nabla U(x) + \sqrt{2Th}\,\xi`, i.e. :math:`q(y \mid x) = \mathcal N(y; x - h\nabla U(x), 2Th\,I)`,
    accepted with probability

    .. math::

        \alpha(x, y) = \min\Big\{1,\ \frac{e^{-U(y)/T}\, q(x \mid y)}{e^{-U(x)/T}\, q(y \mid x)}\Big\},

    so that the Gibbs density :math:`e^{-U/T}` is exactly invariant for every step size
    :cite:p:`roberts1996mala`. The step has the Euler-Maruyama / SGLD scaling of :func:`euler_maruyama`
    (``lr = 2 * step_size``; ``book/conventions.md``, "The one scaling convention"). Introduced in the chapter
    "Langevin dynamics and its stationary distribution".

    Args:
        U: a :class:`Potential`, or a callable mapping particles ``(num_particles, dim)`` to
            ``(num_particles,)``; each output entry must depend on its own particle only.
        x0: initial particles, shape ``(num_particles, dim)``; the run happens on its device and dtype.
        step_size: the proposal's time step :math:`h > 0`.
        num_steps: the number of proposals per chain.
        generator: an optional ``torch.Generator`` on the particles' device (proposals and the uniform
            draws of the test both use it).
        grad_U: the gradient of ``U``; by default the potential's ``grad_U``, or autograd through ``U``.
        temperature: :math:`T > 0`.
        thin: keep every ``thin``-th state in the trajectory (needs ``return_trajectory=True``).
        return_trajectory: also return the states after steps ``0, thin, 2 thin, ...``.

    Returns:
        ``(samples, acceptance_rate)``: the final particles and the fraction of accepted proposals
        over all chains and steps (a float; ``nan`` when ``num_steps == 0``). With
        ``return_trajectory=True``, ``(samples, acceptance_rate, trajectory)``.

    Raises:
        TypeError, ValueError: for bad arguments (as :func:`euler_maruyama`); ``temperature`` must be > 0.
        FloatingPointError: if ``U`` or its gradient is not finite at the initial particles, or if at a
            finite proposal ``U`` is NaN or ``-inf`` or ``grad_U`` is not finite where ``U`` is (the
            message names the first such step, checked every 100 steps). ``U = +inf`` is a valid
            zero density there: such proposals are rejected.
    """
    value_and_grad = _value_and_grad(U, grad_U)
    _check_particles(x0)
    step_size = _check_positive(step_size, "step_size")
    num_steps = _check_count(num_steps, "num_steps")
    temperature = _check_positive(temperature, "temperature")
    thin = _check_thin(thin, return_trajectory)
    _check_generator(generator, x0)

    x = x0.detach().clone()
    u, g = value_and_grad(x)
    if not isinstance(u, torch.Tensor) or u.shape != (x.shape[0],):
        raise ValueError(f"U(x) must return shape (num_particles,) = ({x.shape[0]},), got "
                         f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}.")
    if not isinstance(g, torch.Tensor) or g.shape != x.shape:
        raise ValueError(f"grad_U(x) must return the particles' shape {tuple(x.shape)}.")
    if not (torch.isfinite(u).all() and torch.isfinite(g).all()):
        raise FloatingPointError("mala: U or its gradient is not finite at the initial particles x0.")
    accepted = torch.zeros((), dtype=torch.float64, device=x.device)
    # broken proposals (U NaN or -inf, or a non-finite gradient where U is finite), one row per step,
    # counted without a host sync and read at each check
    tally = torch.zeros(_NONFINITE_CHECK_EVERY, 2, dtype=torch.int64, device=x.device)

    def step(state, k):
        nonlocal accepted

        def tallied(y):
            u_y, grad_y = value_and_grad(y)
            u_y, grad_y = u_y.detach(), grad_y.detach()
            _tally_bad_proposals(y, u_y, grad_y, tally[(k - 1) % _NONFINITE_CHECK_EVERY])
            return u_y, grad_y

        *state, accept = mala_step(*state, tallied, step_size, temperature, generator)
        accepted += accept.sum()
        return tuple(state)

    def check(state, first, last):
        _check_proposals(tally[: last - first + 1], first, x.shape[0])
        tally.zero_()

    out = run_chains(step, (x, u.detach(), g.detach()), num_steps, thin=thin, return_trajectory=return_trajectory,
                     check=check, desc="mala")
    rate = accepted.item() / (x.shape[0] * num_steps) if num_steps > 0 else float("nan")
    if return_trajectory:
        (x, _, _), trajectory = out
        return x, rate, trajectory
    return out[0], rate


def hmc(
    U: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    step_size: float,
    num_leapfrog: int,
    num_samples: int,
    burn_in: int = 0,
    thin: int = 1,
    target_accept: float = 0.8,
    generator: torch.Generator | None = None,
    show_progress: bool = True,
) -> tuple[torch.Tensor, float]:
    r"""Hamiltonian Monte Carlo :cite:p:`neal2011hmc` for many independent chains at once (chapter 6).

    Each transition is :func:`hmc_step`: it draws :math:`p \sim \mathcal N(0, I)`, runs ``num_leapfrog``
    leapfrog steps of the Hamiltonian :math:`H = U(\theta) + \tfrac12\lVert p\rVert^2` and accepts with
    probability :math:`\min(1, e^{H_0 - H_1})`, so the chains leave :math:`e^{-U}` exactly invariant (no
    discretisation bias; the potential follows the conventions page). During ``burn_in`` each
    chain's step size adapts by Robbins-Monro on the log scale toward ``target_accept``
    (:math:`\log\epsilon \leftarrow \log\epsilon + (\alpha - \alpha^*)/\sqrt{t + 1}`); after it,
    step sizes are fixed and jittered by ±10 % per transition to avoid periodic orbits. The loop is
    :func:`run_chains`.

    Args:
        U: batched potential ``(C, P) -> (C,)`` (chains are independent); its gradient is taken by autograd.
        x0: initial states ``(C, P)``.
        step_size: initial leapfrog step size.
        num_leapfrog: leapfrog steps per transition.
        num_samples: transitions kept per chain after the burn-in (before thinning).
        burn_in: adaptation transitions, discarded.
        thin: keep every ``thin``-th transition.
        target_accept: acceptance rate the burn-in aims at.
        generator: ``torch.Generator`` for momenta, jitter and acceptance.
        show_progress: a tqdm bar (``bdk.progress``).

    Returns:
        ``(samples, acceptance_rate)``: samples ``(num_samples // thin, C, P)`` and the mean acceptance
        probability after the burn-in.

    Raises:
        ValueError: for a non-positive step size or counts that do not make sense.
        FloatingPointError: if the chains become non-finite (checked every 100 transitions; a proposal
            with a NaN energy is rejected, so only a non-finite ``x0`` or ``U`` leads there).
    """
    if step_size <= 0 or num_leapfrog < 1 or num_samples < 1 or burn_in < 0 or thin < 1:
        raise ValueError("hmc needs step_size > 0, num_leapfrog >= 1, num_samples >= 1, burn_in >= 0 and thin >= 1.")
    if x0.dim() != 2:
        raise ValueError(f"x0 must be (num_chains, dim), got {tuple(x0.shape)}.")
    device, dtype = x0.device, x0.dtype
    C = x0.shape[0]
    value_and_grad = _autograd_value_and_grad(U)
    theta = x0.detach().clone()
    u, g = value_and_grad(theta)
    log_eps = torch.full((C,), math.log(step_size), device=device, dtype=dtype)
    accept_sum, accept_n = 0.0, 0

    def transition(state, k):
        nonlocal log_eps, accept_sum, accept_n
        eps = log_eps.exp()
        if k > burn_in:  # after the burn-in: jitter by +-10 %
            eps = eps * (1 + 0.1 * (2 * torch.rand(C, device=device, dtype=dtype, generator=generator) - 1))
        *state, _, alpha = hmc_step(*state, value_and_grad, eps, num_leapfrog, generator)
        if k <= burn_in:  # Robbins-Monro on log eps toward target_accept
            log_eps = log_eps + (alpha - target_accept) / math.sqrt(float(k))
        else:
            accept_sum += float(alpha.mean())
            accept_n += 1
        return tuple(state)

    _, trajectory = run_chains(transition, (theta, u, g), burn_in + num_samples, burn_in=burn_in, thin=thin,
                               return_trajectory=True, progress=show_progress, desc="hmc")
    return trajectory[1:], accept_sum / max(accept_n, 1)


# ----------------------------------------------------------------------------------------------
# the Fokker-Planck equation in one dimension
# ----------------------------------------------------------------------------------------------


def _bernoulli(z: torch.Tensor) -> torch.Tensor:
    """B(z) = z / (e^z - 1), with B(0) = 1, stable for every z (positive everywhere)."""
    small = z.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1 - z / 2 + z * z / 12, safe / torch.expm1(safe))


def _check_grid(grid: torch.Tensor) -> float:
    if not isinstance(grid, torch.Tensor) or not grid.is_floating_point() or grid.dim() != 1:
        raise TypeError("grid must be a one-dimensional floating-point tensor of cell centres.")
    if grid.numel() < 3:
        raise ValueError(f"grid must hold at least 3 cell centres, got {grid.numel()}.")
    diffs = grid[1:] - grid[:-1]
    dx = float((grid[-1] - grid[0]) / (grid.numel() - 1))
    if not (dx > 0 and torch.isfinite(grid).all()):
        raise ValueError("grid must be finite and strictly increasing.")
    tolerance = 64 * torch.finfo(grid.dtype).eps * max(float(grid.abs().max()), dx)
    if float((diffs - dx).abs().max()) > tolerance:
        raise ValueError("grid must be uniformly spaced (e.g. torch.linspace(a, b, n, dtype=torch.float64)).")
    return dx


def _potential_on_grid(U, grid: torch.Tensor) -> torch.Tensor:
    if isinstance(U, torch.Tensor):
        values = U.to(device=grid.device, dtype=grid.dtype)
    elif callable(U):
        with torch.no_grad():
            values = U(grid[:, None])
    else:
        raise TypeError("U must be a callable on (num_points, 1) tensors, a Potential, or a tensor of values on the grid.")
    if not isinstance(values, torch.Tensor) or values.shape != grid.shape:
        raise ValueError(f"U on the grid must have the grid's shape {tuple(grid.shape)}.")
    if not torch.isfinite(values).all():
        raise ValueError("U is not finite everywhere on the grid.")
    return values.to(grid.dtype)


def _fp_coefficients(u: torch.Tensor, dx: float, temperature: float):
    """Face coefficients of the Scharfetter-Gummel flux J_{i+1/2} = a_{i+1/2} p_i - b_{i+1/2} p_{i+1}."""
    v = -(u[1:] - u[:-1]) / dx  # drift velocity -U' at the faces
    if temperature > 0:
        peclet = v * dx / temperature
        a = temperature / dx * _bernoulli(-peclet)
        b = temperature / dx * _bernoulli(peclet)
    else:  # the T -> 0 limit of the same flux is the upwind flux
        a, b = v.clamp(min=0), (-v).clamp(min=0)
    return a, b


def fokker_planck_max_dt(U, grid: torch.Tensor, temperature: float = 1.0) -> float:
    r"""The largest time step for which :func:`fokker_planck_1d` keeps the density non-negative.

    With the face coefficients :math:`a_{i+1/2}, b_{i+1/2} \ge 0` of the flux
    :math:`J_{i+1/2} = a_{i+1/2} p_i - b_{i+1/2} p_{i+1}`, the explicit step is
    :math:`p_i' = (1 - \Delta t\, r_i) p_i + \tfrac{\Delta t}{\Delta x}(b_{i+1/2} p_{i+1} + a_{i-1/2} p_{i-1})`
    with outflow rate :math:`r_i = (a_{i+1/2} + b_{i-1/2})/\Delta x`. All coefficients are non-negative,
    so the density stays non-negative and its :math:`L^1` norm cannot grow, if and only if

    .. math::

        \Delta t \le \Delta t_{\max} = 1 / \max_i r_i ,

    which is :math:`\Delta x^2 / (2T)` without drift (the heat-equation limit) and
    :math:`\Delta x / \max |U'|` without diffusion (the CFL limit). Introduced in the chapter
    "Langevin dynamics and its stationary distribution".

    Args:
        U: as in :func:`fokker_planck_1d`.
        grid: uniformly spaced cell centres, shape ``(num_cells,)``.
        temperature: :math:`T \ge 0`.

    Returns:
        :math:`\Delta t_{\max}` as a float.
    """
    dx = _check_grid(grid)
    temperature = _check_positive(temperature, "temperature", allow_zero=True)
    u = _potential_on_grid(U, grid)
    a, b = _fp_coefficients(u, dx, temperature)
    outflow = torch.zeros_like(u)
    outflow[:-1] += a
    outflow[1:] += b
    rate = float(outflow.max()) / dx
    return math.inf if rate == 0 else 1.0 / rate


def fokker_planck_1d(
    U,
    grid: torch.Tensor,
    p0: torch.Tensor,
    dt: float,
    num_steps: int,
    temperature: float = 1.0,
    *,
    thin: int | None = None,
    return_trajectory: bool = False,
):
    r"""Solve the one-dimensional Fokker-Planck equation of Langevin dynamics by finite volumes.

    The density :math:`p(x, t)` of :math:`\mathrm d\theta = -U'(\theta)\,\mathrm dt + \sqrt{2T}\,\mathrm dW`
    obeys :cite:p:`risken1996fokker`

    .. math::

        \partial_t p = -\partial_x J, \qquad J = -U'(x)\, p - T\,\partial_x p
        = -T e^{-U/T}\,\partial_x\big(e^{U/T} p\big).

    The cells are centred on ``grid`` (spacing :math:`\Delta x`); the flux through each interior face is
    the Scharfetter-Gummel (exponential fitting) flux

    .. math::

        J_{i+1/2} = \frac{T}{\Delta x}\Big(B(-P_{i+1/2})\, p_i - B(P_{i+1/2})\, p_{i+1}\Big), \qquad
        P_{i+1/2} = -\frac{U_{i+1} - U_i}{T}, \quad B(z) = \frac{z}{e^z - 1},

    :cite:p:`scharfetter1969large`, which vanishes exactly for the discrete Gibbs density
    :math:`p_i \propto e^{-U_i/T}` (so that is the
    solver's steady state) and becomes the upwind flux as :math:`T \to 0`. The two outer faces carry no
    flux, so the mass :math:`\sum_i p_i\,\Delta x` is conserved up to round-off. Time stepping is explicit
    Euler, stable and positivity-preserving for :math:`\Delta t \le \Delta t_{\max}`
    (:func:`fokker_planck_max_dt`). Introduced in the chapter "Langevin dynamics and its stationary
    distribution".

    Args:
        U: a :class:`Potential` of dimension 1, a callable on ``(num_cells, 1)`` tensors returning
            ``(num_cells,)``, or a tensor of the potential's values at the cell centres.
        grid: uniformly spaced cell centres, shape ``(num_cells,)`` (float64 recommended).
        p0: the initial density at the cell centres, shape ``(num_cells,)``, non-negative; its mass
            ``p0.sum() * dx`` is what the solver conserves (normalise it to 1 for a probability density).
        dt: the time step :math:`\Delta t`, at most :func:`fokker_planck_max_dt`.
        num_steps: the number of time steps.
        temperature: :math:`T \ge 0`.
        thin: keep every ``thin``-th density in the trajectory (needs ``return_trajectory=True``).
        return_trajectory: also return the densities after steps ``0, thin, 2 thin, ...``.

    Returns:
        The density after ``num_steps`` steps, shape ``(num_cells,)``; with ``return_trajectory=True``,
        ``(density, trajectory)`` with ``trajectory[k]`` the density after ``k * thin`` steps (time
        ``k * thin * dt``).

    Raises:
        ValueError: if ``dt`` exceeds the stability limit (the message gives the largest allowed ``dt``),
            if the grid is not uniform, if ``p0`` has the wrong shape, negative or non-finite entries or no mass.
    """
    dx = _check_grid(grid)
    temperature = _check_positive(temperature, "temperature", allow_zero=True)
    num_steps = _check_count(num_steps, "num_steps")
    dt = _check_positive(dt, "dt")
    thin = _check_thin(thin, return_trajectory)
    if not isinstance(p0, torch.Tensor) or p0.shape != grid.shape:
        raise ValueError(f"p0 must be a tensor of the grid's shape {tuple(grid.shape)}.")
    p = p0.detach().to(device=grid.device, dtype=grid.dtype).clone()
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError("p0 must be finite and non-negative.")
    if float(p.sum()) <= 0:
        raise ValueError("p0 has no mass; pass a density with p0.sum() * dx > 0.")
    u = _potential_on_grid(U, grid)
    a, b = _fp_coefficients(u, dx, temperature)
    outflow = torch.zeros_like(u)
    outflow[:-1] += a
    outflow[1:] += b
    max_rate = float(outflow.max()) / dx
    dt_max = math.inf if max_rate == 0 else 1.0 / max_rate
    if dt > dt_max:
        raise ValueError(
            f"dt={dt:.6g} exceeds the stability limit of the explicit scheme, dt_max = {dt_max:.6g}, for this "
            f"grid (dx={dx:.4g}), potential and temperature T={temperature} (the limit is about dx^2/(2T) where "
            "diffusion dominates and dx/max|U'| where drift does). Use dt <= dt_max (with more steps) or a coarser grid."
        )
    # One step is p' = M p with M_{i,i+1} = up_i (from cell i+1 into cell i), M_{i+1,i} = down_i (from
    # cell i into cell i+1) and M_{ii} = 1 - (mass leaving cell i): all entries >= 0, every column sums
    # to one. The off-diagonal entries are rounded to multiples of the machine epsilon (a change of
    # round-off size) so that the diagonal 1 - up - down is computed without rounding error and the
    # columns sum to one *exactly*; the mass then only wanders by the unbiased round-off of each product.
    quantum = torch.finfo(grid.dtype).eps
    up = torch.round(dt / dx * b / quantum) * quantum
    down = torch.round(dt / dx * a / quantum) * quantum
    leaving = torch.zeros_like(u)
    leaving[1:] += up  # cell i+1 sends up_i into cell i
    leaving[:-1] += down  # cell i sends down_i into cell i+1
    c = (1.0 - leaving).clamp(min=0.0)  # >= 0 since dt <= dt_max (the clamp only guards round-off)
    block = thin if return_trajectory else num_steps
    advance = _fp_advance(c, up, down, block, total_steps=num_steps)
    trajectory = [p.clone()] if return_trajectory else None
    done = 0
    while block > 0 and num_steps - done >= block:
        p = advance(p)
        done += block
        if return_trajectory:
            trajectory.append(p.clone())
    if num_steps > done:
        p = _fp_advance(c, up, down, num_steps - done)(p)
    if return_trajectory:
        return p, torch.stack(trajectory)
    return p


def _fp_advance(c: torch.Tensor, up: torch.Tensor, down: torch.Tensor, num_steps: int, total_steps: int | None = None):
    """Return p -> (``num_steps`` explicit steps applied to p); ``total_steps`` is how many will be taken in all.

    Either step by step (O(N) per step), or, when cheaper, through the dense matrix power M^num_steps of
    the (non-negative, column-stochastic) one-step matrix M, computed once by repeated squaring. Both are
    the same explicit scheme and differ by round-off only; a product of non-negative matrices stays
    non-negative, so positivity and mass conservation (to round-off) hold either way.
    """
    n = c.numel()
    total_steps = num_steps if total_steps is None else total_steps
    # rough costs in seconds on a laptop CPU: a handful of small tensor ops per step, vs. about
    # 2 log2(num_steps) dense products of 2 n^3 flops each (then one matrix-vector product per block)
    cost_loop = total_steps * (3e-5 + 8e-9 * n)
    cost_dense = 2 * max(1, math.ceil(math.log2(num_steps + 1))) * 2 * n**3 / 5e9 + 1e-3
    if num_steps <= 1 or n > 2048 or cost_loop <= cost_dense:
        def loop(p):
            for _ in range(num_steps):
                new = c * p
                new[:-1] += up * p[1:]
                new[1:] += down * p[:-1]
                p = new
            return p
        return loop
    m = torch.diag(c) + torch.diag(up, 1) + torch.diag(down, -1)
    power = _column_stochastic_power(m, num_steps)
    return lambda p: power @ p


def _column_stochastic_power(m: torch.Tensor, k: int) -> torch.Tensor:
    """M^k by repeated squaring for a non-negative M whose columns sum to one.

    Every product's columns are rescaled to sum to one: in exact arithmetic they already do, so this only
    removes the rounding error of the product, which would otherwise accumulate into a systematic drift of
    the mass.
    """

    def normalised(a: torch.Tensor) -> torch.Tensor:
        return a / a.sum(0, keepdim=True)

    result, base = None, m
    while k:
        if k & 1:
            result = base if result is None else normalised(base @ result)
        k >>= 1
        if k:
            base = normalised(base @ base)
    return result


def euler_maruyama_stationary_density_1d(
    grad_U, grid: torch.Tensor, step_size: float, temperature: float = 1.0
) -> torch.Tensor:
    r"""The stationary density of the Euler-Maruyama chain itself (not of the SDE), on a 1-D grid.

    The chain :math:`x' = x - hU'(x) + \sqrt{2Th}\,\xi` has the transition density
    :math:`k(x, x') = \mathcal N(x'; x - hU'(x), 2Th)`. On a uniform grid fine enough to resolve the
    kernel (:math:`\Delta x \le \sqrt{2Th}/3`), the rule-of-trapezoids discretisation
    :math:`K_{ij} \propto k(x_i, x_j)` (rows normalised) is accurate to many digits, and its stationary
    vector :math:`\pi K = \pi` gives the chain's stationary density, whose distance to :math:`e^{-U/T}` is
    the discretisation bias of :func:`euler_maruyama` without any sampling noise. The grid must cover the
    region where the density is not negligible (mass that would leave it is kept inside).
    Introduced in the chapter "Langevin dynamics and its stationary distribution".

    Args:
        grad_U: as in :func:`euler_maruyama`.
        grid: uniformly spaced points, shape ``(num_points,)``; a few thousand at most (dense solve).
        step_size: :math:`h > 0`.
        temperature: :math:`T > 0`.

    Returns:
        The stationary density at the grid points, float64, normalised so ``density.sum() * dx == 1``.

    Raises:
        ValueError: if the grid does not resolve the kernel or is too large for a dense solve.
    """
    grad_fn = _resolve_grad(grad_U)
    dx = _check_grid(grid)
    step_size = _check_positive(step_size, "step_size")
    temperature = _check_positive(temperature, "temperature")
    width = math.sqrt(2 * temperature * step_size)
    if dx > width / 3:
        raise ValueError(
            f"the grid spacing dx={dx:.4g} does not resolve the transition kernel of width "
            f"sqrt(2 T h)={width:.4g}; use dx <= {width / 3:.4g}."
        )
    if grid.numel() > 6000:
        raise ValueError(f"grid has {grid.numel()} points; the dense stationary solve allows at most 6000.")
    x = grid.detach().to(torch.float64).cpu()
    with torch.no_grad():
        g = grad_fn(x[:, None]).reshape(-1).to(torch.float64)
    if not torch.isfinite(g).all():
        raise ValueError("grad_U is not finite everywhere on the grid.")
    mean = (x - step_size * g).numpy()
    xs = x.numpy()
    log_k = -((xs[None, :] - mean[:, None]) ** 2) / (2 * width**2)
    k = np.exp(log_k - log_k.max(axis=1, keepdims=True))
    k /= k.sum(axis=1, keepdims=True)
    n = len(xs)
    system = k.T - np.eye(n)
    system[-1, :] = 1.0
    rhs = np.zeros(n)
    rhs[-1] = 1.0
    pi = linalg.solve(system, rhs)
    pi = np.clip(pi, 0.0, None)  # round-off only: the exact solution of a stochastic K is >= 0
    return torch.from_numpy(pi / (pi.sum() * dx))


# ----------------------------------------------------------------------------------------------
# exact references for histograms
# ----------------------------------------------------------------------------------------------


def _check_edges(edges) -> torch.Tensor:
    e = torch.as_tensor(edges, dtype=torch.float64).detach().cpu()
    if e.dim() != 1 or e.numel() < 2 or not torch.isfinite(e).all() or not (e[1:] > e[:-1]).all():
        raise ValueError("bin edges must be a finite, strictly increasing 1-D sequence of at least 2 values.")
    return e


def gibbs_bin_probabilities(
    potential: Potential, edges, temperature: float = 1.0, nodes_per_bin: int = 16
) -> torch.Tensor:
    r"""Exact probabilities of histogram bins under the Gibbs density :math:`e^{-U/T}/Z_T`.

    Each bin's integral is computed by Gauss-Legendre quadrature (``nodes_per_bin`` nodes per axis),
    which for the smooth densities here is exact to many digits. The mass outside the binned region is
    ``1 - probs.sum()``. Introduced in the chapter "Langevin dynamics and its stationary distribution".

    Args:
        potential: a :class:`Potential` of dimension 1 or 2 with a normaliser at this temperature.
        edges: bin edges; for dimension 2 a pair ``(edges_x1, edges_x2)``.
        temperature: :math:`T > 0`.
        nodes_per_bin: quadrature nodes per bin and axis.

    Returns:
        float64 tensor of bin probabilities, shape ``(num_bins,)`` or ``(num_bins_1, num_bins_2)``.
    """
    if not isinstance(potential, Potential):
        raise TypeError("potential must be a bdk.langevin.Potential.")
    nodes, weights = np.polynomial.legendre.leggauss(_check_count(nodes_per_bin, "nodes_per_bin", 1))
    nodes, weights = torch.from_numpy(nodes), torch.from_numpy(weights)

    def points(e):
        lo, hi = e[:-1], e[1:]
        half = (hi - lo) / 2
        return (lo + half)[:, None] + half[:, None] * nodes[None], half[:, None] * weights[None]

    log_z = potential.log_normaliser(temperature)
    if potential.dim == 1:
        e = _check_edges(edges)
        x, w = points(e)
        with torch.no_grad():
            dens = torch.exp(-potential.U(x.reshape(-1, 1)) / temperature - log_z).reshape(x.shape)
        return (dens * w).sum(1)
    if potential.dim == 2:
        if len(edges) != 2:
            raise ValueError("for a 2-D potential pass edges=(edges_x1, edges_x2).")
        (x1, w1), (x2, w2) = points(_check_edges(edges[0])), points(_check_edges(edges[1]))
        grid = torch.stack(torch.broadcast_tensors(x1[:, None, :, None], x2[None, :, None, :]), dim=-1)
        with torch.no_grad():
            dens = torch.exp(-potential.U(grid.reshape(-1, 2)) / temperature - log_z).reshape(grid.shape[:-1])
        return (dens * w1[:, None, :, None] * w2[None, :, None, :]).sum((2, 3))
    raise ValueError(f"gibbs_bin_probabilities supports dimensions 1 and 2, got {potential.dim}.")


def _histogram(samples: torch.Tensor, edges) -> torch.Tensor:
    x = samples.detach().to(torch.float64).cpu()
    if x.dim() == 1:
        x = x[:, None]
    if x.shape[1] == 1:
        e = _check_edges(edges)
        counts, _ = np.histogram(x[:, 0].numpy(), bins=e.numpy())
    elif x.shape[1] == 2:
        e1, e2 = _check_edges(edges[0]), _check_edges(edges[1])
        counts, _, _ = np.histogram2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=[e1.numpy(), e2.numpy()])
    else:
        raise ValueError(f"histograms of dimension 1 or 2 only, got samples of shape {tuple(samples.shape)}.")
    return torch.from_numpy(counts.astype(np.float64))


def histogram_tv_distance(samples: torch.Tensor, edges, probabilities: torch.Tensor) -> float:
    r"""Total-variation distance between the histogram of ``samples`` and exact bin probabilities.

    .. math::

        \mathrm{TV} = \tfrac12 \Big(\sum_k |\hat p_k - p_k| + |\hat p_{\mathrm{out}} - p_{\mathrm{out}}|\Big),

    where the last term compares the fractions outside the binned region. Compare it with
    :func:`tv_null_moments`, its mean and standard deviation under exact independent sampling.
    Introduced in the chapter "Langevin dynamics and its stationary distribution".

    Args:
        samples: shape ``(num_samples,)`` or ``(num_samples, dim)`` with dim 1 or 2.
        edges: bin edges (a pair for dim 2), as for :func:`gibbs_bin_probabilities`.
        probabilities: exact bin probabilities (for instance from :func:`gibbs_bin_probabilities`).
    """
    counts = _histogram(samples, edges)
    probs = torch.as_tensor(probabilities, dtype=torch.float64).cpu()
    if probs.shape != counts.shape:
        raise ValueError(f"probabilities of shape {tuple(probs.shape)} do not match the {tuple(counts.shape)} bins.")
    n = samples.shape[0]
    frac = counts / n
    inside = (frac - probs).abs().sum()
    outside = abs((1 - frac.sum()) - (1 - probs.sum()))
    return float(0.5 * (inside + outside))


def tv_null_moments(probabilities: torch.Tensor, num_samples: int) -> tuple[float, float]:
    r"""Mean and standard deviation of :func:`histogram_tv_distance` when the samples are exact and iid.

    The counts are multinomial; for large ``num_samples`` each :math:`\hat p_k - p_k` is close to
    :math:`\mathcal N(0, p_k(1-p_k)/n)`, so :math:`\mathbb E|\hat p_k - p_k| = \sqrt{2 p_k (1-p_k) / (\pi n)}`
    and :math:`\operatorname{Var}|\hat p_k - p_k| = (1 - 2/\pi)\, p_k(1-p_k)/n`. Summing over the bins
    (and the outside bin) and neglecting the weak correlations between bins gives

    .. math::

        \mathbb E[\mathrm{TV}] \approx \tfrac12 \sum_k \sqrt{\tfrac{2 p_k(1-p_k)}{\pi n}}, \qquad
        \operatorname{sd}[\mathrm{TV}] \approx \tfrac12 \sqrt{(1 - \tfrac{2}{\pi}) \sum_k \tfrac{p_k(1-p_k)}{n}}.

    A histogram distance above ``mean + 4 * sd`` is therefore evidence of a biased sampler (or too short a
    burn-in). Introduced in the chapter "Langevin dynamics and its stationary distribution".

    Args:
        probabilities: exact bin probabilities (any shape); the outside bin ``1 - sum`` is added.
        num_samples: the number of independent samples :math:`n`.

    Returns:
        ``(mean, sd)``.
    """
    n = _check_count(num_samples, "num_samples", 1)
    p = torch.as_tensor(probabilities, dtype=torch.float64).reshape(-1).cpu()
    p = torch.cat([p, (1 - p.sum()).clamp(min=0).reshape(1)])
    var = p * (1 - p) / n
    mean = 0.5 * torch.sqrt(2 * var / math.pi).sum()
    sd = 0.5 * torch.sqrt((1 - 2 / math.pi) * var.sum())
    return float(mean), float(sd)

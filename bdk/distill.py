"""Bayesian dark knowledge: online distillation of a posterior predictive into one network (chapter 6).

Algorithm 1 of :cite:t:`korattikara2015bdk` ("Distilled SGLD"), online: every iteration takes one
step of a *teacher* that produces posterior samples (SGLD on a minibatch of the training data; an
MC-dropout network or IVON work the same way) and, after a burn-in, one SGD step of a *student* on
a minibatch drawn from a pluggable **student data generator**, with the loss

.. math::
    \\hat L(w \\mid \\theta^s, x') = -\\mathbb E_{p(y \\mid x', \\theta^s)} \\log S(y \\mid x', w),

the cross-entropy from the current teacher sample's predictive to the student's. Averaged over the
teacher's samples this is, up to a constant, the KL divergence from the posterior predictive
:math:`p(y \\mid x, \\mathcal D)` to the student :math:`S(y \\mid x, w)`.

* Classification: :func:`classification_distillation_loss`, the cross-entropy from the teacher
  sample's class probabilities to the student's softmax (the paper's Eq. 4).
* Regression: the student outputs a mean :math:`\\mu(x, w)` and a log-variance :math:`\\alpha(x, w)`
  and :func:`regression_distillation_loss` is the expected negative log density of
  :math:`\\mathcal N(y \\mid \\mu, e^{\\alpha})` under the teacher sample's Gaussian
  :math:`\\mathcal N(y \\mid f(x \\mid \\theta^s), \\lambda_n^{-1})` (the paper's §2.2).

The teacher's SGLD steps follow the book's one scaling convention (``book/conventions.md``, "The one
scaling convention"): ``bdk.samplers.SGLD`` with the minibatch potential of
``bdk.samplers.neg_log_posterior``. The module also holds the tools the chapter needs around the
algorithm: a vectorised ensemble predictive (``torch.func.vmap`` over stacked samples), running
ensemble averages, and the potential of a small MLP on its flat parameter vector, which
``bdk.langevin.hmc`` samples for the toy problems' exact-MCMC reference.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .cache import Checkpointer, progress
from .langevin import Potential
from .samplers import SGLD, PosteriorSamples, _mlp_layout, _stacked_mlp_forward, neg_log_posterior

__all__ = [
    "classification_distillation_loss",
    "regression_distillation_loss",
    "gaussian_noise_inputs",
    "uniform_inputs",
    "SGLDTeacher",
    "DropoutTeacher",
    "IVONTeacher",
    "Student",
    "EnsembleAverage",
    "distillation_step",
    "Distiller",
    "StackedDistiller",
    "stacked_noise_inputs",
    "mlp_init_flat",
    "mlp",
    "mlp_num_params",
    "mlp_forward_flat",
    "mlp_value_and_grad_flat",
    "MLPPotential",
    "mlp_potential",
    "stack_samples",
    "categorical_kl",
    "gaussian_kl",
]

TASKS = ("classification", "regression")


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------


def classification_distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from a teacher sample's class probabilities to the student's softmax.

    .. math::
        \\hat L(w \\mid \\theta^s, x') = -\\sum_{k=1}^K p(y = k \\mid x', \\theta^s)\\,
        \\log S(y = k \\mid x', w),

    averaged over the minibatch (Eq. 4 of :cite:t:`korattikara2015bdk`; chapter 6). Its gradient
    with respect to the student's logits is :math:`S - p`.

    Args:
        student_logits: the student's logits, ``(n, K)``.
        teacher_probs: the teacher sample's class probabilities, ``(n, K)``, rows summing to 1.

    Returns:
        The mean loss over the ``n`` inputs (a scalar tensor).

    Raises:
        ValueError: if the shapes differ or are not ``(n, K)``.
    """
    if student_logits.dim() != 2 or student_logits.shape != teacher_probs.shape:
        raise ValueError(
            f"student_logits and teacher_probs must both be (n, K); got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_probs.shape)}."
        )
    return -(teacher_probs * F.log_softmax(student_logits, dim=-1)).sum(-1).mean()


def regression_distillation_loss(
    student_mean: torch.Tensor,
    student_log_var: torch.Tensor,
    teacher_mean: torch.Tensor,
    teacher_noise_var: torch.Tensor | float,
) -> torch.Tensor:
    """Expected negative log density of the student's Gaussian under a teacher sample's Gaussian.

    With the teacher sample's predictive :math:`p(y \\mid x, \\theta^s) = \\mathcal N(f, \\lambda_n^{-1})`
    and the student :math:`S(y \\mid x, w) = \\mathcal N(\\mu, e^{\\alpha})`,

    .. math::
        \\hat L = -\\mathbb E_{\\mathcal N(y \\mid f, \\lambda_n^{-1})} \\log \\mathcal N(y \\mid \\mu, e^{\\alpha})
        = \\tfrac12 \\log 2\\pi + \\tfrac12 \\alpha + \\tfrac12 e^{-\\alpha}\\big((f - \\mu)^2 + \\lambda_n^{-1}\\big),

    averaged over the minibatch (§2.2 of :cite:t:`korattikara2015bdk`; chapter 6). Averaged over
    teacher samples its minimiser is the moment-matched Gaussian of the posterior predictive:
    :math:`\\mu = \\bar f`, :math:`e^{\\alpha} = \\operatorname{Var}(f) + \\lambda_n^{-1}`.

    Args:
        student_mean: :math:`\\mu(x', w)`, ``(n,)``.
        student_log_var: :math:`\\alpha(x', w)`, ``(n,)``.
        teacher_mean: :math:`f(x' \\mid \\theta^s)`, ``(n,)``.
        teacher_noise_var: :math:`\\lambda_n^{-1} > 0`, a number or a tensor broadcastable to ``(n,)``.

    Returns:
        The mean loss over the ``n`` inputs (a scalar tensor).

    Raises:
        ValueError: on mismatched shapes or a non-positive noise variance.
    """
    if student_mean.shape != student_log_var.shape or student_mean.shape != teacher_mean.shape or student_mean.dim() != 1:
        raise ValueError(
            "student_mean, student_log_var and teacher_mean must all be (n,); got "
            f"{tuple(student_mean.shape)}, {tuple(student_log_var.shape)} and {tuple(teacher_mean.shape)}."
        )
    noise_var = torch.as_tensor(teacher_noise_var, dtype=student_mean.dtype, device=student_mean.device)
    if not bool((noise_var > 0).all()):
        raise ValueError("teacher_noise_var must be positive (it is the inverse noise precision 1/lambda_n).")
    second_moment = (teacher_mean - student_mean).pow(2) + noise_var
    loss = 0.5 * math.log(2 * math.pi) + 0.5 * student_log_var + 0.5 * torch.exp(-student_log_var) * second_moment
    return loss.mean()


# --------------------------------------------------------------------------------------------------
# Student data generators: callables (batch_size, generator) -> inputs
# --------------------------------------------------------------------------------------------------


@dataclass
class gaussian_noise_inputs:  # noqa: N801 (a function-like callable object)
    """Student data generator: training inputs plus Gaussian noise, :math:`x' = x_i + \\sigma\\,\\xi`.

    The paper's choice for high-dimensional inputs ("sample near the training data, for example by
    perturbing the inputs slightly", §2 of :cite:t:`korattikara2015bdk`; chapter 6). Calling it with
    ``(batch_size, generator)`` draws ``batch_size`` training rows uniformly with replacement and adds
    noise. ``noise_std=0`` returns plain training inputs.

    Args:
        x: the training inputs ``(N, ...)`` (on the device the student trains on).
        noise_std: :math:`\\sigma \\ge 0`.

    Raises:
        ValueError: for a negative ``noise_std`` or an empty ``x``.
    """

    x: torch.Tensor
    noise_std: float

    def __post_init__(self):
        if self.noise_std < 0 or not math.isfinite(self.noise_std):
            raise ValueError(f"noise_std must be a finite number >= 0, got {self.noise_std!r}.")
        if self.x.shape[0] == 0:
            raise ValueError("x must hold at least one training input.")

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = torch.randint(self.x.shape[0], (batch_size,), device=self.x.device, generator=generator)
        out = self.x[idx]
        if self.noise_std > 0:
            out = out + self.noise_std * torch.randn(out.shape, device=out.device, dtype=out.dtype, generator=generator)
        return out


@dataclass
class uniform_inputs:  # noqa: N801
    """Student data generator: inputs drawn uniformly from a box ``[low, high]`` (per dimension).

    The paper's choice for low-dimensional problems ("uniformly sample the input domain", §2 of
    :cite:t:`korattikara2015bdk`; chapter 6).

    Args:
        low: lower corner, a sequence of length ``D`` (or a number for ``D = 1``).
        high: upper corner, same length, each entry above ``low``.
        device: where to create the inputs.

    Raises:
        ValueError: if ``low`` and ``high`` differ in length or ``high <= low`` somewhere.
    """

    low: Sequence[float] | float
    high: Sequence[float] | float
    device: torch.device | str = "cpu"

    def __post_init__(self):
        low = torch.as_tensor(self.low, dtype=torch.float32).reshape(-1)
        high = torch.as_tensor(self.high, dtype=torch.float32).reshape(-1)
        if low.shape != high.shape or not bool((high > low).all()):
            raise ValueError(f"low and high must have the same length and high > low everywhere; got {self.low} and {self.high}.")
        self._low, self._high = low.to(self.device), high.to(self.device)

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand((batch_size, self._low.numel()), device=self._low.device, generator=generator)
        return self._low + (self._high - self._low) * u


# --------------------------------------------------------------------------------------------------
# Teachers: objects with step(x, y) -> loss, predict(x) -> predictive of the current sample
# --------------------------------------------------------------------------------------------------


def _gamma_sample(shape: float, rate: float, generator: torch.Generator | None, device) -> float:
    """One draw from Gamma(shape, rate) with a torch generator (Marsaglia & Tsang, shape >= 1)."""
    if shape < 1:
        raise ValueError("the Gamma posterior of the noise precision needs shape >= 1.")
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        z = float(torch.randn((), generator=generator, device=device))
        v = (1.0 + c * z) ** 3
        if v <= 0:
            continue
        u = float(torch.rand((), generator=generator, device=device))
        if math.log(u) < 0.5 * z * z + d - d * v + d * math.log(v):
            return d * v / rate


class SGLDTeacher:
    """A teacher whose posterior samples come from SGLD (the paper's teacher; chapter 6).

    Each :meth:`step` is one SGLD step of :cite:t:`welling2011sgld` on the minibatch potential
    :math:`\\hat U = \\tfrac{\\lambda}{2}\\lVert\\theta\\rVert^2 - \\tfrac{N}{M}\\sum_{i\\in S}\\log p(y_i\\mid x_i,\\theta)`
    (``bdk.samplers.neg_log_posterior``; conventions page), i.e.
    :math:`\\theta \\leftarrow \\theta - \\tfrac{\\eta_t}{2}\\nabla\\hat U + \\mathcal N(0, \\eta_t I)`,
    Algorithm 1 of :cite:t:`korattikara2015bdk`. :meth:`predict` returns the predictive of the current
    sample :math:`\\theta_t`.

    For regression the noise precision :math:`\\lambda_n` is either fixed (``noise_precision``) or,
    with ``noise_prior=(a, b)``, a Gamma(a, b) prior, resampled from its exact conditional
    :math:`\\lambda_n \\mid \\theta, \\mathcal D \\sim \\mathrm{Gamma}(a + N/2,\\, b + \\tfrac12\\sum_i (y_i - f(x_i\\mid\\theta))^2)`
    after every SGLD step (a Gibbs step on the full training set ``x_full, y_full``).

    Args:
        model: the network (logits for classification, ``(n,)`` or ``(n, 1)`` predictions for regression).
        num_data: :math:`N`.
        prior_precision: :math:`\\lambda` of the Gaussian prior on every weight.
        lr: the initial step size :math:`\\eta_0`.
        likelihood: ``"classification"`` or ``"regression"``.
        noise_precision: :math:`\\lambda_n` (regression, fixed), or the initial value with ``noise_prior``.
        noise_prior: ``(a, b)`` of a Gamma prior on :math:`\\lambda_n` (regression); needs ``x_full, y_full``.
        noise_every: with ``noise_prior``, the Gibbs step of :math:`\\lambda_n` follows every
            ``noise_every``-th SGLD step (a full pass over the training set; each step leaves the
            joint posterior invariant, so any fixed schedule samples it).
        x_full, y_full: the whole training set for the Gibbs step of :math:`\\lambda_n`.
        temperature: SGLD temperature (1 samples the posterior).
        lr_lambda: optional step-size schedule, a function of the step count returning a factor of
            ``lr`` (``torch.optim.lr_scheduler.LambdaLR``), e.g. the paper's halving every 80k steps.
        generator: ``torch.Generator`` for the SGLD noise and the Gibbs draws.

    Raises:
        ValueError: for an unknown likelihood or a regression teacher without a noise precision.
    """

    def __init__(
        self,
        model: nn.Module,
        num_data: int,
        prior_precision: float,
        lr: float,
        *,
        likelihood: str = "classification",
        noise_precision: float | None = None,
        noise_prior: tuple[float, float] | None = None,
        x_full: torch.Tensor | None = None,
        y_full: torch.Tensor | None = None,
        temperature: float = 1.0,
        lr_lambda: Callable[[int], float] | None = None,
        generator: torch.Generator | None = None,
        noise_every: int = 1,
    ):
        if isinstance(noise_every, bool) or not isinstance(noise_every, int) or noise_every < 1:
            raise ValueError(f"noise_every must be a positive integer, got {noise_every!r}.")
        if likelihood not in TASKS:
            raise ValueError(f"likelihood must be one of {TASKS}, got {likelihood!r}.")
        if likelihood == "regression":
            if noise_precision is None or noise_precision <= 0:
                raise ValueError("a regression teacher needs a positive noise_precision (the initial value with noise_prior).")
            if noise_prior is not None:
                if len(noise_prior) != 2 or min(noise_prior) <= 0:
                    raise ValueError(f"noise_prior must be (shape a > 0, rate b > 0), got {noise_prior!r}.")
                if x_full is None or y_full is None:
                    raise ValueError("noise_prior needs the whole training set as x_full and y_full for the Gibbs step.")
        self.model = model
        self.num_data = int(num_data)
        self.prior_precision = float(prior_precision)
        self.likelihood = likelihood
        self.noise_precision = None if noise_precision is None else float(noise_precision)
        self.noise_prior = noise_prior
        self.x_full, self.y_full = x_full, y_full
        self.generator = generator
        self.noise_every = noise_every
        self.num_steps = 0
        self.optimizer = SGLD(model.parameters(), lr=lr, temperature=temperature, generator=generator)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda) if lr_lambda is not None else None
        self.model.eval()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One SGLD step on the minibatch ``(x, y)`` (then the Gibbs step of the noise precision)."""
        self.optimizer.zero_grad(set_to_none=True)
        potential = neg_log_posterior(
            self.model, x, y, self.num_data, self.prior_precision, self.likelihood, self.noise_precision
        )
        potential.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.num_steps += 1
        if self.noise_prior is not None and self.num_steps % self.noise_every == 0:
            with torch.no_grad():
                residual = self._regression_out(self.x_full) - self.y_full
                a, b = self.noise_prior
                self.noise_precision = _gamma_sample(
                    a + 0.5 * residual.numel(), b + 0.5 * float(residual.pow(2).sum()), self.generator, residual.device
                )
        return potential.detach()

    def _regression_out(self, x):
        out = self.model(x)
        return out.reshape(x.shape[0])

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        """The current sample's predictive: class probabilities ``(n, K)``, or ``(mean (n,), noise_var)``."""
        if self.likelihood == "classification":
            return F.softmax(self.model(x), dim=-1)
        return self._regression_out(x), 1.0 / self.noise_precision

    def sample_vector(self) -> torch.Tensor:
        """The current parameter sample as one flat vector (a copy)."""
        return nn.utils.parameters_to_vector(self.model.parameters()).detach().clone()

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "noise_precision": self.noise_precision,
            "num_steps": self.num_steps,
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.noise_precision = state["noise_precision"]
        self.num_steps = state.get("num_steps", 0)
        if self.generator is not None and state["generator"] is not None:
            self.generator.set_state(state["generator"])


class _OptimizerTeacher:
    """What the dropout and IVON teachers share: the minibatch's average negative log likelihood, the
    predictive of one network output, and the state of the model and its optimizer."""

    def __init__(self, model: nn.Module, optimizer, likelihood: str, noise_precision: float | None):
        if likelihood not in TASKS:
            raise ValueError(f"likelihood must be one of {TASKS}, got {likelihood!r}.")
        if likelihood == "regression" and (noise_precision is None or noise_precision <= 0):
            raise ValueError("a regression teacher needs a positive noise_precision.")
        self.model, self.optimizer = model, optimizer
        self.likelihood, self.noise_precision = likelihood, noise_precision

    def _loss(self, x, y):
        out = self.model(x)
        if self.likelihood == "classification":
            return F.cross_entropy(out, y)
        return 0.5 * self.noise_precision * (out.reshape(y.shape) - y).pow(2).mean()

    def _predictive(self, out: torch.Tensor):
        if self.likelihood == "classification":
            return F.softmax(out, dim=-1)
        return out.reshape(out.shape[0]), 1.0 / self.noise_precision

    def state_dict(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


class DropoutTeacher(_OptimizerTeacher):
    """A Monte Carlo dropout teacher :cite:p:`gal2016dropout` (chapter 6, beyond the paper).

    :meth:`step` takes one step of ``optimizer`` on the minibatch's average negative log likelihood
    with dropout active (the prior enters as the optimizer's weight decay); :meth:`predict` runs the
    network with a fresh dropout mask, one sample of the approximate posterior predictive. Dropout
    draws from PyTorch's global generator, whose state :class:`Distiller` checkpoints.

    Args:
        model: a network with ``nn.Dropout`` layers, outputting logits (classification) or ``(n,)``/``(n, 1)``.
        optimizer: its optimizer (e.g. ``torch.optim.SGD(..., weight_decay=...)``).
        likelihood: ``"classification"`` or ``"regression"``.
        noise_precision: :math:`\\tau` for regression.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, likelihood: str = "classification",
                 noise_precision: float | None = None):
        super().__init__(model, optimizer, likelihood, noise_precision)
        if not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()):
            raise ValueError("DropoutTeacher needs a model with at least one nn.Dropout layer.")

    def step(self, x, y):
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(x, y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def predict(self, x):
        self.model.train()  # dropout on: one Monte Carlo sample
        return self._predictive(self.model(x))


class IVONTeacher(_OptimizerTeacher):
    """A variational teacher trained by IVON :cite:p:`shen2024ivon` (chapter 6, beyond the paper).

    Works with ``bdk.optim.IVON`` or the reference ``ivon.IVON`` (same interface): :meth:`step` does
    ``with optimizer.sampled_params(train=True): loss.backward()`` on the minibatch's average negative
    log likelihood, once for each of the optimizer's ``mc_samples``, then ``optimizer.step()``;
    :meth:`predict` runs the network inside ``optimizer.sampled_params()``, i.e. on one draw from the
    Gaussian posterior :math:`\\mathcal N(m, 1/(\\nu(\\bar H + \\delta)))`. The draws use PyTorch's
    global generator.

    Args:
        model: the network (logits for classification).
        optimizer: an IVON optimizer over ``model.parameters()``.
        likelihood: ``"classification"`` or ``"regression"``.
        noise_precision: :math:`\\tau` for regression.
    """

    def __init__(self, model: nn.Module, optimizer, *, likelihood: str = "classification",
                 noise_precision: float | None = None):
        if not hasattr(optimizer, "sampled_params"):
            raise TypeError("IVONTeacher needs an optimizer with a sampled_params() context manager (bdk.optim.IVON or ivon.IVON).")
        super().__init__(model, optimizer, likelihood, noise_precision)
        self.model.eval()

    def step(self, x, y):
        mc = int(self.optimizer.param_groups[0].get("mc_samples", 1))
        total = 0.0
        for _ in range(mc):  # the reference usage: zero_grad inside, so each sample's gradient stands alone
            with self.optimizer.sampled_params(train=True):
                self.optimizer.zero_grad(set_to_none=True)
                loss = self._loss(x, y)
                loss.backward()
            total = total + loss.detach()
        self.optimizer.step()
        return total / mc

    @torch.no_grad()
    def predict(self, x):
        with self.optimizer.sampled_params():
            out = self.model(x)
        return self._predictive(out)


# --------------------------------------------------------------------------------------------------
# Student
# --------------------------------------------------------------------------------------------------


class Student:
    """A student network with its own optimizer, schedule and prior (chapter 6).

    The paper's student step is SGD with weight decay :math:`\\gamma` (the student prior),
    :math:`w \\leftarrow w - \\rho_t\\big(\\tfrac1M\\sum_{x'}\\nabla_w \\hat L(w, \\theta_{t+1} \\mid x') + \\gamma w\\big)`
    (Algorithm 1 of :cite:t:`korattikara2015bdk`): build it with :meth:`sgd`. Any optimizer works.
    For regression the network must output two columns: the mean and the log-variance.

    Args:
        model: the student network.
        optimizer: its optimizer.
        scheduler: optional learning-rate scheduler, stepped once per student step.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}.")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

    @classmethod
    def sgd(cls, model: nn.Module, lr: float, prior_precision: float = 0.0, momentum: float = 0.0,
            step_every: int | None = None, gamma: float = 1.0) -> "Student":
        """The paper's student: SGD with rate ``lr`` and weight decay ``prior_precision`` (:math:`\\gamma`),
        optionally multiplying the rate by ``gamma`` every ``step_every`` student steps (the paper's
        :math:`\\rho_t`, e.g. ×0.8 every 5,000 steps on Boston housing)."""
        if lr <= 0 or prior_precision < 0:
            raise ValueError(f"lr must be > 0 and prior_precision >= 0; got {lr} and {prior_precision}.")
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=prior_precision)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_every, gamma) if step_every else None
        return cls(model, opt, sched)

    def state_dict(self):
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def distillation_loss(self, xs: torch.Tensor, target, task: str = "classification") -> torch.Tensor:
        """:math:`\\hat L(w \\mid \\theta, x')` on the student inputs ``xs`` against the teacher sample's
        predictive ``target`` (class probabilities, or ``(mean, noise variance)`` for regression)."""
        self.model.train()
        out = self.model(xs)
        if task == "classification":
            return classification_distillation_loss(out, target)
        if out.dim() != 2 or out.shape[1] != 2:
            raise ValueError(f"a regression student must output (n, 2) = (mean, log-variance); got {tuple(out.shape)}.")
        mean, noise_var = target
        return regression_distillation_loss(out[:, 0], out[:, 1], mean, noise_var)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task: str = "classification"):
        """The student's predictive: class probabilities ``(n, K)``, or ``(mean (n,), variance (n,))``."""
        self.model.eval()
        out = self.model(x)
        if task == "classification":
            return F.softmax(out, dim=-1)
        return out[:, 0], out[:, 1].exp()


# --------------------------------------------------------------------------------------------------
# Running ensemble averages of the teacher's predictive
# --------------------------------------------------------------------------------------------------


class EnsembleAverage:
    """Running Monte Carlo average of a teacher's predictive on fixed inputs (chapter 6).

    This is how the SGLD ensemble is evaluated without storing its samples:
    :math:`\\hat p(y \\mid x, \\mathcal D) = \\frac1S\\sum_s p(y \\mid x, \\theta^s)`. Classification keeps
    the sum of the class probabilities; regression keeps the first two moments of :math:`f` and the
    mean noise variance (moment-matched Gaussian), and, when targets are given, the running
    log-sum-exp of each sample's log density of the targets (the exact mixture log-likelihood).

    Args:
        inputs: named input tensors, e.g. ``{"test": x_test, "ood": x_ood}``.
        task: ``"classification"`` or ``"regression"``.
        targets: for regression, optional named targets (same names) for the mixture log-likelihood.
    """

    def __init__(self, inputs: Mapping[str, torch.Tensor], task: str = "classification",
                 targets: Mapping[str, torch.Tensor] | None = None):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        self.inputs, self.task = dict(inputs), task
        self.targets = dict(targets or {})
        self.count = 0
        self.sums: dict[str, dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def update(self, teacher) -> None:
        """Add the teacher's current sample's predictive on every input set."""
        self.count += 1
        for name, x in self.inputs.items():
            pred = teacher.predict(x)
            acc = self.sums.setdefault(name, {})
            if self.task == "classification":
                acc["probs"] = acc.get("probs", 0) + pred.double()
            else:  # noise_var: a number, or a tensor broadcastable to the means (one per stacked member)
                mean, noise_var = pred
                mean = mean.double()
                noise_var = noise_var.double() if torch.is_tensor(noise_var) else float(noise_var)
                acc["m1"] = acc.get("m1", 0) + mean
                acc["m2"] = acc.get("m2", 0) + mean.pow(2)
                acc["noise_var"] = acc.get("noise_var", 0) + noise_var
                if name in self.targets:
                    y = self.targets[name].double()
                    log_norm = torch.log(2 * math.pi * noise_var) if torch.is_tensor(noise_var) else math.log(2 * math.pi * noise_var)
                    logp = -0.5 * log_norm - 0.5 * (y - mean).pow(2) / noise_var
                    acc["logsumexp"] = logp if "logsumexp" not in acc else torch.logaddexp(acc["logsumexp"], logp)

    def result(self, name: str):
        """The ensemble predictive on input set ``name``: probabilities ``(n, K)``, or a dict with
        ``mean``, ``var`` (moment-matched) and, with targets, ``log_lik`` (per example, the mixture's)."""
        if self.count == 0:
            raise RuntimeError("no teacher sample has been averaged yet (is the run past its burn-in?).")
        acc = self.sums[name]
        if self.task == "classification":
            return (acc["probs"] / self.count).float()
        mean = acc["m1"] / self.count
        var = (acc["m2"] / self.count - mean.pow(2)).clamp_min(0) + acc["noise_var"] / self.count
        out = {"mean": mean.float(), "var": var.float()}
        if "logsumexp" in acc:
            out["log_lik"] = (acc["logsumexp"] - math.log(self.count)).float()
        return out

    def state_dict(self):
        return {"count": self.count, "sums": self.sums}

    def load_state_dict(self, state):
        self.count, self.sums = state["count"], state["sums"]


# --------------------------------------------------------------------------------------------------
# The online distillation loop (Algorithm 1)
# --------------------------------------------------------------------------------------------------


def distillation_step(teacher, students: Mapping[str, "Student"], x: torch.Tensor, y: torch.Tensor,
                      student_inputs: Callable[[], torch.Tensor], task: str = "classification",
                      iteration: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""One iteration of Algorithm 1 of :cite:t:`korattikara2015bdk` (Distilled SGLD):

    .. math::
        \theta_{t+1} &= \theta_t - \tfrac{\eta_t}{2} \nabla \hat U(\theta_t) + \mathcal N(0, \eta_t I)
            \quad \text{(the teacher's step on the minibatch } (x, y)\text{)} \\
        x' &\sim \text{the student data generator}, \qquad
        w \leftarrow w - \eta_{\mathcal S} \Big(\tfrac{1}{M} \sum_{x'} \nabla_w \hat L(w \mid \theta_{t+1}, x')
            + \delta_{\mathcal S}\, w\Big)

    for every student :math:`\mathcal S` (the paper's student step is SGD; its rate
    :math:`\eta_{\mathcal S}` and weight decay :math:`\delta_{\mathcal S}` live in the student's
    optimizer, so any optimizer works). During the burn-in ``students`` is empty: only the teacher
    steps, and no student inputs are drawn.

    Returns:
        The teacher's loss and each student's loss.

    Raises:
        FloatingPointError: when the teacher's or a student's loss is not finite (names ``iteration``).
    """
    teacher_loss = teacher.step(x, y)  # theta_{t+1}
    if not bool(torch.isfinite(torch.as_tensor(teacher_loss))):
        raise FloatingPointError(f"distillation iteration {iteration}: the teacher's loss is {float(teacher_loss)}. "
                                 "Lower the teacher's step size, or check the data and the prior.")
    student_losses = {}
    if students:
        xs = student_inputs()  # x' ~ student data generator
        target = teacher.predict(xs)  # p(y | x', theta_{t+1})
    for name, student in students.items():
        student.optimizer.zero_grad(set_to_none=True)
        loss = student.distillation_loss(xs, target, task)  # L(w | theta_{t+1}, x')
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"distillation iteration {iteration}: student {name!r} has loss "
                                     f"{float(loss.detach())}. Lower its learning rate or increase its prior precision.")
        loss.backward()
        student.optimizer.step()  # w <- w - eta_S (grad L + delta_S w)
        if student.scheduler is not None:
            student.scheduler.step()
        student_losses[name] = loss.detach()
    return teacher_loss, student_losses


class Distiller:
    """Online distillation of a teacher's posterior predictive into students (Algorithm 1; chapter 6).

    One iteration (:meth:`step`) of :cite:t:`korattikara2015bdk`'s Distilled SGLD:

    1. the teacher takes one step on a minibatch of ``batch_size`` training examples (without
       replacement within an epoch), giving the sample :math:`\\theta_{t+1}`;
    2. after ``burn_in`` iterations, ``student_data(student_batch_size, generator)`` draws the student's
       inputs :math:`\\mathcal D'` and every student takes one optimizer step on
       :func:`classification_distillation_loss` (or :func:`regression_distillation_loss`) against the
       teacher sample's predictive on :math:`\\mathcal D'`;
    3. every ``thin`` iterations after the burn-in, the teacher's predictive on ``ensemble_inputs`` is
       added to a running :class:`EnsembleAverage` (the teacher ensemble, e.g. "SGLD" in the paper's
       tables), and the last ``keep_samples`` teacher samples are kept in a
       ``bdk.samplers.PosteriorSamples`` store, :attr:`samples` (for timing the ensemble).

    :meth:`run` loops to a total number of iterations with a progress bar and, given a
    ``bdk.Checkpointer``, saves everything needed to resume bit for bit: teacher, students,
    optimizers, schedulers, the minibatch order, this object's generator and PyTorch's global RNG.

    Args:
        teacher: an :class:`SGLDTeacher`, :class:`DropoutTeacher`, :class:`IVONTeacher` or any object
            with ``step(x, y)``, ``predict(x)``, ``state_dict()`` and ``load_state_dict()``.
        students: one :class:`Student` or a mapping ``name -> Student`` (all learn from the same teacher samples).
        x, y: the training set.
        student_data: the student data generator, a callable ``(batch_size, generator) -> inputs``
            (e.g. :class:`gaussian_noise_inputs`, :class:`uniform_inputs`).
        task: ``"classification"`` or ``"regression"``.
        batch_size: teacher minibatch size :math:`M`.
        student_batch_size: student minibatch size (default ``batch_size``).
        burn_in: iterations before students learn and the ensemble starts averaging.
        thin: average the teacher's predictive every ``thin`` iterations.
        ensemble_inputs: named inputs on which to average the teacher's predictive.
        ensemble_targets: named regression targets for the mixture log-likelihood.
        keep_samples: keep the last ``keep_samples`` teacher samples (needs an :class:`SGLDTeacher`, whose
            model's parameters are the sample) in :attr:`samples`, a ``PosteriorSamples`` sliding window.
        keep_thin: keep a sample every ``keep_thin`` iterations after the burn-in (default ``thin``).
        generator: ``torch.Generator`` for minibatches and student data (on the data's device).

    Raises:
        ValueError: on an unknown task, sizes that do not fit, or negative counts.
        TypeError: when ``students`` holds something other than :class:`Student`.
        FloatingPointError: from :meth:`step` when a teacher or student loss is not finite (names the step).
    """

    def __init__(
        self,
        teacher,
        students: Student | Mapping[str, Student],
        x: torch.Tensor,
        y: torch.Tensor,
        student_data: Callable[[int, torch.Generator | None], torch.Tensor],
        *,
        task: str = "classification",
        batch_size: int = 100,
        student_batch_size: int | None = None,
        burn_in: int = 0,
        thin: int = 1,
        ensemble_inputs: Mapping[str, torch.Tensor] | None = None,
        ensemble_targets: Mapping[str, torch.Tensor] | None = None,
        keep_samples: int = 0,
        keep_thin: int | None = None,
        generator: torch.Generator | None = None,
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"x and y must hold the same non-zero number of examples; got {x.shape[0]} and {y.shape[0]}.")
        if not (isinstance(batch_size, int) and 1 <= batch_size <= x.shape[0]):
            raise ValueError(f"batch_size must be an integer in [1, {x.shape[0]}], got {batch_size!r}.")
        student_batch_size = batch_size if student_batch_size is None else student_batch_size
        if not (isinstance(student_batch_size, int) and student_batch_size >= 1):
            raise ValueError(f"student_batch_size must be a positive integer, got {student_batch_size!r}.")
        for name, value in (("burn_in", burn_in), ("keep_samples", keep_samples)):
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
        keep_thin = thin if keep_thin is None else keep_thin
        for name, value in (("thin", thin), ("keep_thin", keep_thin)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not callable(student_data):
            raise TypeError("student_data must be a callable (batch_size, generator) -> inputs.")
        if isinstance(students, Student):
            students = {"student": students}
        students = dict(students)
        if not students or not all(isinstance(s, Student) for s in students.values()):
            raise TypeError("students must be a Student or a non-empty mapping name -> Student.")
        if keep_samples and not isinstance(teacher, SGLDTeacher):
            raise ValueError("keep_samples keeps the teacher's parameters as posterior samples, which needs an "
                             f"SGLDTeacher; got {type(teacher).__name__}. Pass keep_samples=0.")
        self.teacher, self.students = teacher, students
        self.x, self.y, self.student_data, self.task = x, y, student_data, task
        self.batch_size, self.student_batch_size = batch_size, student_batch_size
        self.burn_in, self.thin, self.keep_samples, self.keep_thin = burn_in, thin, keep_samples, keep_thin
        self.generator = generator
        self.ensemble = EnsembleAverage(ensemble_inputs or {}, task, ensemble_targets) if ensemble_inputs else None
        # the kept samples: the sample store of chapter 3, a sliding window of the last keep_samples
        self.samples = (PosteriorSamples(teacher.model, max_samples=keep_samples, when_full="drop_oldest")
                        if keep_samples else None)
        self.iteration = 0
        self.history: dict[str, list[float]] = {"teacher": [], **{name: [] for name in students}}
        self._perm = None
        self._cursor = 0

    # -- minibatches without replacement within an epoch ------------------------------------------
    def _next_indices(self) -> torch.Tensor:
        n = self.x.shape[0]
        if self._perm is None or self._cursor + self.batch_size > n:
            self._perm = torch.randperm(n, device=self.x.device, generator=self.generator)
            self._cursor = 0
        idx = self._perm[self._cursor:self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return idx

    def step(self) -> None:
        """One iteration of Algorithm 1 (:func:`distillation_step`: the teacher's step, then the students'
        steps after the burn-in), with the bookkeeping around it: the loss history every ``thin``
        iterations, the ensemble average and the kept samples."""
        idx = self._next_indices()
        step = self.iteration + 1
        learning = self.iteration >= self.burn_in
        loss, student_losses = distillation_step(
            self.teacher, self.students if learning else {}, self.x[idx], self.y[idx],
            lambda: self.student_data(self.student_batch_size, self.generator), self.task, step)
        if step % max(1, self.thin) == 0:
            self.history["teacher"].append(float(loss))
            for name, s_loss in student_losses.items():
                self.history[name].append(float(s_loss))
        if learning:
            if self.ensemble is not None and (step - self.burn_in) % self.thin == 0:
                self.ensemble.update(self.teacher)
            if self.samples is not None and (step - self.burn_in) % self.keep_thin == 0:
                self.samples.add()  # the teacher model's current parameters
        self.iteration = step

    def run(self, num_iterations: int, checkpointer: Checkpointer | None = None,
            callback: Callable[["Distiller"], None] | None = None, callback_every: int = 0,
            desc: str = "distillation") -> "Distiller":
        """Iterate until ``num_iterations`` iterations in total (resuming from ``checkpointer`` if it holds a state).

        Args:
            num_iterations: the total number of iterations :math:`T` (not the number still to run).
            checkpointer: optional ``bdk.Checkpointer``; loaded before the loop, saved every ``checkpointer.every``.
            callback: optional function called with this object every ``callback_every`` iterations.
            callback_every: see ``callback``.
            desc: the progress bar's label.

        Returns:
            ``self``.
        """
        if not (isinstance(num_iterations, int) and num_iterations >= 0):
            raise ValueError(f"num_iterations must be an integer >= 0, got {num_iterations!r}.")
        if checkpointer is not None:
            state = checkpointer.load()
            if state is not None:
                self.load_state_dict(state)
        for _ in progress(range(self.iteration, num_iterations), desc=desc, total=max(0, num_iterations - self.iteration)):
            self.step()
            if callback is not None and callback_every and self.iteration % callback_every == 0:
                callback(self)
            if checkpointer is not None:
                checkpointer.maybe_save(self.iteration, self.state_dict)
        return self

    def state_dict(self) -> dict:
        """Everything needed to resume exactly (teacher, students, RNG states, minibatch order, averages)."""
        return {
            "iteration": self.iteration,
            "teacher": self.teacher.state_dict(),
            "students": {name: s.state_dict() for name, s in self.students.items()},
            "generator": None if self.generator is None else self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "perm": self._perm,
            "cursor": self._cursor,
            "ensemble": None if self.ensemble is None else self.ensemble.state_dict(),
            "samples": None if self.samples is None else self.samples.state_dict(),
            "history": {k: list(v) for k, v in self.history.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (the objects must have been built the same way)."""
        if set(state["students"]) != set(self.students):
            raise ValueError(f"the checkpoint holds students {sorted(state['students'])}, this run has {sorted(self.students)}.")
        self.iteration = state["iteration"]
        self.teacher.load_state_dict(state["teacher"])
        for name, s in self.students.items():
            s.load_state_dict(state["students"][name])
        if self.generator is not None and state["generator"] is not None:
            self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self._perm = None if state["perm"] is None else state["perm"].to(self.x.device)
        self._cursor = state["cursor"]
        if self.ensemble is not None and state["ensemble"] is not None:
            self.ensemble.load_state_dict(state["ensemble"])
        saved = state["samples"]
        if self.samples is not None:
            if isinstance(saved, list):  # a checkpoint of the former list of flat vectors
                for vector in saved:
                    self.samples.add({n: v[0] for n, v in stack_samples(self.teacher.model, vector[None]).items()})
            elif saved:
                self.samples.load_state_dict(saved)
        self.history = {k: list(v) for k, v in state["history"].items()}


# --------------------------------------------------------------------------------------------------
# Many independent runs of Algorithm 1 at once (data splits, seeds): one tensor operation per step
# --------------------------------------------------------------------------------------------------


def _gamma_batched(shape: float, rate: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Independent draws from Gamma(shape, rate_c) for every entry of ``rate`` (Marsaglia & Tsang,
    shape >= 1), the batched twin of :func:`_gamma_sample`: the same proposal and acceptance test,
    redrawn only where a member was rejected."""
    if shape < 1:
        raise ValueError("the Gamma posterior of the noise precision needs shape >= 1.")
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty_like(rate)
    todo = torch.ones_like(rate, dtype=torch.bool)
    while bool(todo.any()):
        z = torch.randn(rate.shape, device=rate.device, dtype=rate.dtype, generator=generator)
        u = torch.rand(rate.shape, device=rate.device, dtype=rate.dtype, generator=generator)
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (u.log() < 0.5 * z * z + d - d * v + d * v.clamp_min(1e-30).log()) & todo
        out = torch.where(ok, d * v / rate, out)
        todo = todo & ~ok
    return out


@dataclass
class stacked_noise_inputs:  # noqa: N801 (a function-like callable object, like gaussian_noise_inputs)
    """Student data of :class:`StackedDistiller`: for each member ``c``, rows of its own training
    inputs ``x[c]`` drawn uniformly with replacement, plus Gaussian noise
    (:class:`gaussian_noise_inputs`, one member per row of ``x``).

    Args:
        x: training inputs ``(C, N, d)``.
        noise_std: :math:`\\sigma \\ge 0`.
    """

    x: torch.Tensor
    noise_std: float

    def __post_init__(self):
        if self.x.dim() != 3 or self.x.shape[1] == 0:
            raise ValueError(f"x must be (members, N, d) with N >= 1, got {tuple(self.x.shape)}.")
        if self.noise_std < 0 or not math.isfinite(self.noise_std):
            raise ValueError(f"noise_std must be a finite number >= 0, got {self.noise_std!r}.")

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        C, N, d = self.x.shape
        idx = torch.randint(N, (C, batch_size), device=self.x.device, generator=generator)
        out = self.x.gather(1, idx.unsqueeze(-1).expand(C, batch_size, d))
        if self.noise_std > 0:
            out = out + self.noise_std * torch.randn(out.shape, device=out.device, dtype=out.dtype, generator=generator)
        return out


def mlp_init_flat(sizes: Sequence[int], num: int, device=None) -> torch.Tensor:
    """``num`` initial parameter vectors ``(num, P)`` of :func:`mlp` ``(sizes)``, each PyTorch's
    default initialisation of a fresh ``nn.Linear`` stack (drawn from the global generator)."""
    return torch.stack([nn.utils.parameters_to_vector(mlp(sizes).parameters()).detach() for _ in range(num)]).to(device)


class StackedDistiller:
    """``C`` independent runs of Algorithm 1 (distilled SGLD) on small MLPs, moved together (chapter 6).

    Member ``c`` has its own training set ``(x[c], y[c])`` (a data split, or the same data with
    another seed), its own SGLD teacher :math:`\\theta_c` and its own student :math:`w_c`; they are
    rows of two tensors ``(C, P)`` and ``(C, Q)``, and every operation of an iteration acts on all
    rows at once (batched matrix products of :func:`mlp_forward_flat`), so the per-operation overhead
    of a small network is paid once per iteration, not once per member. Each iteration is, for every
    member, exactly the iteration of :class:`Distiller` with an :class:`SGLDTeacher` and a
    :meth:`Student.sgd` student:

    1. teacher: :math:`\\theta \\leftarrow \\theta - \\tfrac{\\eta_t}{2}\\nabla\\hat U(\\theta) + \\sqrt{\\eta_t}\\,\\xi`
       on a minibatch of ``batch_size`` rows (without replacement within an epoch), with
       :math:`\\hat U` of ``bdk.samplers.neg_log_posterior``; for regression with ``noise_prior=(a, b)``
       then, every ``noise_every`` iterations, the Gibbs draw
       :math:`\\lambda_n \\sim \\mathrm{Gamma}(a + N/2, b + \\tfrac12\\sum_i r_i^2)`;
    2. after ``burn_in`` iterations, student: :math:`w \\leftarrow w - \\rho_j(\\nabla_w \\hat L + \\gamma w)`
       on ``student_data(student_batch_size)`` with :func:`classification_distillation_loss` or
       :func:`regression_distillation_loss` against the teacher sample's predictive;
    3. every ``thin`` iterations after the burn-in, the teacher's predictive on ``ensemble_inputs``
       joins the running ensemble average (:class:`EnsembleAverage`'s sums, one per member).

    The members share one random generator, so member ``c`` of a stacked run does not draw the same
    numbers as a serial run of its own; ``tests/test_distill.py`` checks each step against the serial
    code for the same draws and the whole run against the serial path statistically.

    Args:
        x, y: training data ``(C, N, d)`` and ``(C, N)`` (class labels or regression targets).
        teacher_sizes, student_sizes: MLP widths; a regression student has 2 outputs (mean, log-variance).
        theta0, w0: initial parameters ``(C, P)`` and ``(C, Q)`` (:func:`mlp_init_flat`).
        student_data: callable ``(batch_size, generator) -> (C, n, d)`` (:class:`stacked_noise_inputs`).
        task: ``"classification"`` or ``"regression"``.
        prior_precision: :math:`\\lambda` of the teacher's Gaussian prior.
        teacher_lr: :math:`\\eta_0`; ``teacher_lr_lambda(t)`` multiplies it at iteration ``t`` (from 0).
        noise_precision: regression: the initial :math:`\\lambda_n` (a number).
        noise_prior: regression: ``(a, b)`` of the Gamma prior on :math:`\\lambda_n` (Gibbs step).
        noise_every: the Gibbs step follows every ``noise_every``-th SGLD step (as :class:`SGLDTeacher`).
        student_lr: :math:`\\rho_0`; ``student_lr_lambda(j)`` multiplies it at student step ``j``.
        student_prior_precision: :math:`\\gamma` (weight decay).
        batch_size, student_batch_size: minibatch sizes.
        burn_in, thin: as in :class:`Distiller`.
        ensemble_inputs: named inputs ``(C, n, d)``; ensemble_targets: named regression targets ``(C, n)``.
        generator: one ``torch.Generator`` for every draw.

    Raises:
        ValueError: on shapes that do not fit or bad settings.
        FloatingPointError: from :meth:`step`, naming the iteration and the member, when a loss is not finite.
    """

    def __init__(self, x, y, teacher_sizes, student_sizes, theta0, w0, student_data, *, task="classification",
                 prior_precision: float, teacher_lr: float, teacher_lr_lambda=None, noise_precision=None,
                 noise_prior=None, noise_every: int = 1, student_lr: float, student_prior_precision: float = 0.0, student_lr_lambda=None,
                 batch_size: int, student_batch_size: int | None = None, burn_in: int = 0, thin: int = 1,
                 ensemble_inputs: Mapping[str, torch.Tensor] | None = None,
                 ensemble_targets: Mapping[str, torch.Tensor] | None = None, generator: torch.Generator | None = None):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        if x.dim() != 3 or y.shape != x.shape[:2]:
            raise ValueError(f"x must be (C, N, d) and y (C, N); got {tuple(x.shape)} and {tuple(y.shape)}.")
        C, N, _ = x.shape
        if theta0.shape != (C, mlp_num_params(teacher_sizes)) or w0.shape != (C, mlp_num_params(student_sizes)):
            raise ValueError(f"theta0 must be ({C}, {mlp_num_params(teacher_sizes)}) and w0 ({C}, "
                             f"{mlp_num_params(student_sizes)}); got {tuple(theta0.shape)} and {tuple(w0.shape)}.")
        if task == "regression" and student_sizes[-1] != 2:
            raise ValueError("a regression student outputs (mean, log-variance): its last width must be 2.")
        if task == "regression" and not (noise_precision is not None and noise_precision > 0):
            raise ValueError("a regression teacher needs a positive noise_precision (the initial value with noise_prior).")
        if noise_prior is not None and (len(noise_prior) != 2 or min(noise_prior) <= 0):
            raise ValueError(f"noise_prior must be (shape a > 0, rate b > 0), got {noise_prior!r}.")
        if not (isinstance(batch_size, int) and 1 <= batch_size <= N):
            raise ValueError(f"batch_size must be an integer in [1, {N}], got {batch_size!r}.")
        for name, value in (("teacher_lr", teacher_lr), ("student_lr", student_lr)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
        if not (isinstance(burn_in, int) and burn_in >= 0 and isinstance(thin, int) and thin >= 1):
            raise ValueError(f"burn_in must be an integer >= 0 and thin >= 1; got {burn_in!r} and {thin!r}.")
        self.x, self.y, self.task = x, y, task
        self.teacher_sizes, self.student_sizes = tuple(teacher_sizes), tuple(student_sizes)
        self.theta, self.w = theta0.detach().clone(), w0.detach().clone()
        self.student_data = student_data
        self.prior_precision, self.teacher_lr, self.teacher_lr_lambda = float(prior_precision), float(teacher_lr), teacher_lr_lambda
        if isinstance(noise_every, bool) or not isinstance(noise_every, int) or noise_every < 1:
            raise ValueError(f"noise_every must be a positive integer, got {noise_every!r}.")
        self.noise_prior, self.noise_every = noise_prior, noise_every
        self.tau = None if task == "classification" else torch.full((C,), float(noise_precision), device=x.device, dtype=x.dtype)
        self.student_lr, self.student_lr_lambda = float(student_lr), student_lr_lambda
        self.student_prior_precision = float(student_prior_precision)
        self.batch_size = batch_size
        self.student_batch_size = batch_size if student_batch_size is None else int(student_batch_size)
        self.burn_in, self.thin = burn_in, thin
        self.averages = EnsembleAverage(ensemble_inputs or {}, task, ensemble_targets)
        self.generator = generator
        self.iteration = 0
        self.history: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}
        self._perm, self._cursor = None, 0

    @property
    def num_members(self) -> int:
        return self.x.shape[0]

    # -- the three parts of an iteration ------------------------------------------------------------
    def _next_indices(self) -> torch.Tensor:
        C, N = self.y.shape
        if self._perm is None or self._cursor + self.batch_size > N:
            self._perm = torch.rand((C, N), device=self.x.device, generator=self.generator).argsort(1)
            self._cursor = 0
        idx = self._perm[:, self._cursor:self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return idx

    def teacher_step(self, idx: torch.Tensor, lr: float, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One SGLD step of every member on the rows ``idx (C, M)``; returns the potentials ``(C,)``.
        ``noise`` (``(C, P)``, standard normal) replaces the generator's draw (for tests)."""
        N, M = self.y.shape[1], idx.shape[1]
        xb = self.x.gather(1, idx.unsqueeze(-1).expand(*idx.shape, self.x.shape[2]))
        yb = self.y.gather(1, idx)
        theta = self.theta

        def neg_log_lik(out):  # -(N/M) sum_i log p(y_i | x_i, theta) and its gradient in the outputs
            if self.task == "classification":
                log_p = torch.log_softmax(out, -1)
                onehot = torch.zeros_like(out).scatter_(-1, yb.unsqueeze(-1), 1.0)
                return -(N / M) * (onehot * log_p).sum((1, 2)), (N / M) * (log_p.exp() - onehot)
            tau = self.tau.view(-1, 1, 1)
            r = out - yb.unsqueeze(-1)
            nll = (N / M) * (0.5 * tau * r.pow(2) - 0.5 * torch.log(tau / (2 * math.pi))).sum((1, 2))
            return nll, (N / M) * tau * r

        with torch.no_grad():
            nll, grad = mlp_value_and_grad_flat(theta, xb, self.teacher_sizes, neg_log_lik)
            U = 0.5 * self.prior_precision * theta.pow(2).sum(1) + nll
            grad = grad.add_(theta, alpha=self.prior_precision)
            if noise is None:
                noise = torch.randn(theta.shape, device=theta.device, dtype=theta.dtype, generator=self.generator)
            self.theta = (theta - 0.5 * lr * grad).add_(noise, alpha=math.sqrt(lr))
        if self.noise_prior is not None and (self.iteration + 1) % self.noise_every == 0:
            with torch.no_grad():
                r = mlp_forward_flat(self.theta, self.x, self.teacher_sizes).squeeze(-1) - self.y
                a, b = self.noise_prior
                self.tau = _gamma_batched(a + 0.5 * N, b + 0.5 * r.pow(2).sum(1), self.generator)
        return U.detach()

    @torch.no_grad()
    def teacher_predict(self, xs: torch.Tensor):
        """The current samples' predictives on ``xs (C, n, d)``: probabilities ``(C, n, K)``, or the
        means ``(C, n)`` and noise variances ``(C, 1)``."""
        out = mlp_forward_flat(self.theta, xs, self.teacher_sizes)
        if self.task == "classification":
            return torch.softmax(out, -1)
        return out.squeeze(-1), (1.0 / self.tau).unsqueeze(1)

    def student_step(self, xs: torch.Tensor, lr: float) -> torch.Tensor:
        """One SGD step (weight decay :math:`\\gamma`) of every student on ``xs``; returns the losses ``(C,)``."""
        target = self.teacher_predict(xs)
        n = xs.shape[1]

        def distillation_loss(out):  # the loss of student_loss and its gradient in the outputs
            if self.task == "classification":
                log_s = torch.log_softmax(out, -1)
                return -(target * log_s).sum((1, 2)) / n, (log_s.exp() - target) / n
            mean, noise_var = target
            mu, alpha = out[..., 0], out[..., 1]
            inv, second = torch.exp(-alpha), (mean - mu).pow(2) + noise_var
            loss = (0.5 * math.log(2 * math.pi) + 0.5 * alpha + 0.5 * inv * second).sum(1) / n
            return loss, torch.stack([-inv * (mean - mu), 0.5 - 0.5 * inv * second], -1) / n

        with torch.no_grad():
            loss, grad = mlp_value_and_grad_flat(self.w, xs, self.student_sizes, distillation_loss)
            self.w = self.w - lr * (grad + self.student_prior_precision * self.w)
        return loss

    def step(self) -> None:
        """One iteration of Algorithm 1 for every member."""
        t = self.iteration
        lr = self.teacher_lr * (self.teacher_lr_lambda(t) if self.teacher_lr_lambda is not None else 1.0)
        U = self.teacher_step(self._next_indices(), lr)
        step = t + 1
        bad = ~torch.isfinite(U)
        if bool(bad.any()):
            c = int(bad.nonzero()[0])
            raise FloatingPointError(f"stacked distillation iteration {step}: member {c}'s teacher potential is "
                                     f"{float(U[c])}. Lower the teacher's step size, or check the data and the prior.")
        record = step % self.thin == 0
        if record:
            self.history["teacher"].append(U)
        if t >= self.burn_in:
            j = t - self.burn_in
            rho = self.student_lr * (self.student_lr_lambda(j) if self.student_lr_lambda is not None else 1.0)
            s_loss = self.student_step(self.student_data(self.student_batch_size, self.generator), rho)
            bad = ~torch.isfinite(s_loss)
            if bool(bad.any()):
                c = int(bad.nonzero()[0])
                raise FloatingPointError(f"stacked distillation iteration {step}: member {c}'s student loss is "
                                         f"{float(s_loss[c])}. Lower its learning rate or raise its prior precision.")
            if record:
                self.history["student"].append(s_loss)
            if self.averages.inputs and (step - self.burn_in) % self.thin == 0:
                self.averages.update(self)  # the running averages call self.predict
        self.iteration = step

    # the same loop as Distiller.run: progress bar, checkpoint loaded before and saved every `every` iterations
    run = Distiller.run

    # -- results ------------------------------------------------------------------------------------
    def ensemble(self, name: str):
        """The members' ensemble predictives on input set ``name`` (:meth:`EnsembleAverage.result`, one
        row per member): probabilities ``(C, n, K)``, or ``mean``, ``var`` and ``log_lik``, each ``(C, n)``."""
        return self.averages.result(name)

    def predict(self, xs: torch.Tensor):
        """The teachers' current predictives (what :class:`EnsembleAverage` averages); see :meth:`teacher_predict`."""
        return self.teacher_predict(xs)

    @torch.no_grad()
    def student_predict(self, xs: torch.Tensor):
        """The students' predictives on ``xs (C, n, d)``: probabilities, or ``(mean, variance)`` each ``(C, n)``."""
        out = mlp_forward_flat(self.w, xs, self.student_sizes)
        if self.task == "classification":
            return torch.softmax(out, -1)
        return out[..., 0], out[..., 1].exp()

    def history_tensors(self) -> dict[str, torch.Tensor]:
        """The recorded losses (every ``thin`` iterations) as ``(records, C)`` tensors."""
        return {k: torch.stack(v) if v else torch.empty(0, self.num_members) for k, v in self.history.items()}

    def state_dict(self) -> dict:
        """Everything needed to resume exactly (parameters, noise precisions, RNG, minibatch order, sums)."""
        return {"iteration": self.iteration, "theta": self.theta, "w": self.w, "tau": self.tau,
                "generator": None if self.generator is None else self.generator.get_state(),
                "perm": self._perm, "cursor": self._cursor, "averages": self.averages.state_dict(),
                "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (the object must have been built the same way)."""
        if state["theta"].shape != self.theta.shape or state["w"].shape != self.w.shape:
            raise ValueError(f"the checkpoint holds parameters {tuple(state['theta'].shape)} / {tuple(state['w'].shape)}, "
                             f"this run has {tuple(self.theta.shape)} / {tuple(self.w.shape)}.")
        dev = self.x.device
        self.iteration = state["iteration"]
        self.theta, self.w = state["theta"].to(dev), state["w"].to(dev)
        self.tau = None if state["tau"] is None else state["tau"].to(dev)
        if self.generator is not None and state["generator"] is not None:
            self.generator.set_state(state["generator"])
        self._perm = None if state["perm"] is None else state["perm"].to(dev)
        self._cursor = state["cursor"]
        averages = state["averages"]
        self.averages.load_state_dict({"count": averages["count"], "sums": {
            n: {k: v.to(dev) if torch.is_tensor(v) else v for k, v in acc.items()} for n, acc in averages["sums"].items()}})
        self.history = {k: list(v) for k, v in state["history"].items()}


# --------------------------------------------------------------------------------------------------
# Small MLPs on flat parameter vectors, and many-chain HMC (the toy problems' exact reference)
# --------------------------------------------------------------------------------------------------


def mlp(sizes: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """A ReLU MLP with layer widths ``sizes`` (e.g. ``(2, 10, 2)``), optionally with dropout before
    every hidden-to-next linear layer. Its ``parameters_to_vector`` layout is the one
    :func:`mlp_forward_flat` reads (weights ``(out, in)`` then bias, layer by layer)."""
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"sizes must list at least two positive layer widths, got {sizes!r}.")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(int(a), int(b)))
    return nn.Sequential(*layers)


def mlp_num_params(sizes: Sequence[int]) -> int:
    """Number of weights and biases of :func:`mlp` ``(sizes)``: :math:`\\sum_l (d_l + 1) d_{l+1}`."""
    return sum((int(a) + 1) * int(b) for a, b in zip(sizes[:-1], sizes[1:]))


@functools.lru_cache(maxsize=64)
def _flat_mlp(sizes: tuple[int, ...]):
    """The layout of :func:`mlp` ``(sizes)`` for ``_stacked_mlp_forward`` and its parameters' names and
    shapes in ``parameters_to_vector`` order (weights ``(out, in)`` then bias, layer by layer)."""
    template = mlp(sizes)
    return _mlp_layout(template), [(n, p.shape) for n, p in template.named_parameters()]


def _unflatten(theta: torch.Tensor, names_shapes) -> dict[str, torch.Tensor]:
    """``{name: (C, *shape)}`` cut from the rows of ``theta (C, P)`` (views where the strides allow)."""
    out, offset, C = {}, 0, theta.shape[0]
    for name, shape in names_shapes:
        n = shape.numel()
        out[name] = theta[:, offset:offset + n].reshape(C, *shape)
        offset += n
    return out


def _flat_inputs(theta: torch.Tensor, x: torch.Tensor, sizes: Sequence[int]):
    """Check ``theta (C, P)`` and ``x`` (``(n, d)`` or ``(C, n, d)``) against ``sizes``; return the layout
    and the stacked parameters."""
    sizes = tuple(int(s) for s in sizes)
    if theta.dim() != 2 or theta.shape[1] != mlp_num_params(sizes):
        raise ValueError(f"theta must be (C, {mlp_num_params(sizes)}) for sizes {sizes}, got {tuple(theta.shape)}.")
    C = theta.shape[0]
    if x.dim() == 3:
        if x.shape[0] != C or x.shape[2] != sizes[0]:
            raise ValueError(f"per-network inputs must be ({C}, n, {sizes[0]}), got {tuple(x.shape)}.")
    elif not (x.dim() == 2 and x.shape[1] == sizes[0]):
        raise ValueError(f"x must be (n, {sizes[0]}) or ({C}, n, {sizes[0]}), got {tuple(x.shape)}.")
    layout, names_shapes = _flat_mlp(sizes)
    return layout, _unflatten(theta, names_shapes)


def mlp_forward_flat(theta: torch.Tensor, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Evaluate the MLP ``sizes`` for a batch of flat parameter vectors at once.

    The rows of ``theta`` are cut into the stacked weights of :func:`mlp` ``(sizes)`` (views, no
    copy) and evaluated by the library's one batched-MLP evaluator, the fast path of
    ``bdk.samplers.StackedMLP`` and ``PosteriorSamples``.

    Args:
        theta: ``(C, P)`` parameter vectors (``P = mlp_num_params(sizes)``), layout of
            ``nn.utils.parameters_to_vector(mlp(sizes).parameters())``.
        x: inputs ``(n, sizes[0])`` shared by all ``C`` networks, or ``(C, n, sizes[0])``, one set
            of inputs per network (e.g. each its own data split).
        sizes: layer widths.

    Returns:
        Outputs ``(C, n, sizes[-1])`` (logits or regression outputs).
    """
    layout, params = _flat_inputs(theta, x, sizes)
    return _stacked_mlp_forward(layout, params, x)


def mlp_value_and_grad_flat(theta: torch.Tensor, x: torch.Tensor, sizes: Sequence[int],
                            loss_and_dout: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]):
    r"""Losses of ``C`` MLPs and their gradients with respect to the flat parameters, by hand-written
    backpropagation (no autograd graph: for tiny networks the graph costs more than the arithmetic).

    The forward pass is :func:`mlp_forward_flat`'s, which keeps the activations feature-major:
    :math:`z_l = W_l h_{l-1} + b_l` with the inputs along the columns and :math:`h_l = \mathrm{relu}(z_l)`.
    With :math:`\delta_L = \partial \ell / \partial z_L` from ``loss_and_dout``:
    :math:`\nabla_{W_l} = \delta_l h_{l-1}^\top`, :math:`\nabla_{b_l} = \sum_n \delta_l`,
    :math:`\delta_{l-1} = (W_l^\top \delta_l) \odot [h_{l-1} > 0]`. ``tests/test_stacked.py`` checks it
    against autograd through :func:`mlp_forward_flat`.

    Args:
        theta: ``(C, P)`` parameters (layout of :func:`mlp_forward_flat`).
        x: inputs ``(n, d)`` or ``(C, n, d)``.
        sizes: layer widths.
        loss_and_dout: ``outputs (C, n, K) -> (losses (C,), d losses / d outputs (C, n, K))``.

    Returns:
        ``(losses (C,), grad (C, P))``.
    """
    layout, params = _flat_inputs(theta, x, sizes)
    saved: list = []
    out = _stacked_mlp_forward(layout, params, x, saved)
    loss, dout = loss_and_dout(out)
    delta = dout.transpose(1, 2)  # (C, K, n): d loss / d z_L, feature-major
    C = theta.shape[0]
    linears = [name for name, m in layout if isinstance(m, nn.Linear)]
    grads = []
    for i in range(len(linears) - 1, -1, -1):
        h, feature_major = saved[i]  # the layer's input h_{l-1}
        grads.append(delta.sum(2))  # grad b_l
        if feature_major:  # (C, in, n)
            grad_w = torch.bmm(delta, h.transpose(1, 2))
        elif h.dim() == 2:  # the shared input (n, d): one matrix product for all C networks
            grad_w = torch.mm(delta.reshape(-1, h.shape[0]), h)
        else:  # per-network inputs (C, n, d)
            grad_w = torch.bmm(delta, h)
        grads.append(grad_w.reshape(C, -1))  # grad W_l, (out, in) row-major
        if i > 0:
            delta = torch.bmm(params[f"{linears[i]}.weight"].transpose(1, 2), delta) * (h > 0)
    return loss, torch.cat(grads[::-1], 1)


class MLPPotential(Potential):
    """The full-batch potential :math:`U(\\theta) = \\tfrac{\\kappa}{2}\\lVert\\theta\\rVert^2 - \\sum_i \\log p(y_i \\mid x_i, \\theta)`
    of an MLP on its flat parameter vector, a :class:`bdk.langevin.Potential` of dimension
    :math:`P` = ``mlp_num_params(sizes)``: ``U`` maps ``(C, P) -> (C,)`` and ``grad_U`` is autograd's
    (the conventions page's :math:`U`; the same potential ``bdk.samplers.neg_log_posterior``
    estimates, constants included for regression). Built by :func:`mlp_potential`; ``bdk.langevin.hmc`` samples
    it for the toy problems' references (chapter 6)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, sizes: Sequence[int], prior_precision: float,
                 likelihood: str = "classification", noise_precision: float | None = None):
        if likelihood not in TASKS:
            raise ValueError(f"likelihood must be one of {TASKS}, got {likelihood!r}.")
        if likelihood == "regression" and (noise_precision is None or noise_precision <= 0):
            raise ValueError("regression needs a positive noise_precision.")
        super().__init__()
        self.x, self.y, self.sizes = x, y, tuple(sizes)
        self.prior_precision, self.likelihood, self.noise_precision = prior_precision, likelihood, noise_precision
        self.dim = mlp_num_params(sizes)

    def U(self, theta: torch.Tensor) -> torch.Tensor:
        out = mlp_forward_flat(theta, self.x, self.sizes)
        prior = 0.5 * self.prior_precision * theta.pow(2).sum(-1)
        y = self.y
        if self.likelihood == "classification":
            log_lik = torch.log_softmax(out, -1).gather(-1, y.view(1, -1, 1).expand(out.shape[0], -1, 1)).sum((1, 2))
        else:
            tau = self.noise_precision
            r = out.squeeze(-1) - y
            log_lik = -0.5 * tau * r.pow(2).sum(-1) + 0.5 * y.numel() * math.log(tau / (2 * math.pi))
        return prior - log_lik


def mlp_potential(x: torch.Tensor, y: torch.Tensor, sizes: Sequence[int], prior_precision: float,
                  likelihood: str = "classification", noise_precision: float | None = None) -> MLPPotential:
    """The :class:`MLPPotential` of the MLP ``sizes`` on the data ``(x, y)`` (a batched potential
    ``(C, P) -> (C,)``; see there)."""
    return MLPPotential(x, y, sizes, prior_precision, likelihood, noise_precision)


def stack_samples(model: nn.Module, vectors: Sequence[torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
    """Turn flat parameter vectors ``(S, P)`` of ``model`` into a dict of stacked tensors ``name -> (S, ...)``
    (views; ``bdk.samplers.PosteriorSamples.from_stacked`` takes such a dict)."""
    vectors = torch.stack(list(vectors)) if not torch.is_tensor(vectors) else vectors
    names_shapes = [(n, p.shape) for n, p in model.named_parameters()]
    total = sum(math.prod(s) for _, s in names_shapes)
    if vectors.dim() != 2 or vectors.shape[1] != total:
        raise ValueError(f"expected parameter vectors of shape (S, {total}), got {tuple(vectors.shape)}.")
    return _unflatten(vectors, names_shapes)


# --------------------------------------------------------------------------------------------------
# Divergences used to compare predictives
# --------------------------------------------------------------------------------------------------


def categorical_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pointwise :math:`\\mathrm{KL}(p \\,\\|\\, q) = \\sum_k p_k (\\log p_k - \\log q_k)` for rows of
    class probabilities ``(n, K) -> (n,)`` (the paper's Table 2 metric, averaged over a grid).
    ``eps`` only guards ``log 0`` for probabilities that underflow in float32."""
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}.")
    p64, q64 = p.double(), q.double()
    return (p64 * (torch.log(p64.clamp_min(eps)) - torch.log(q64.clamp_min(eps)))).sum(-1)


def gaussian_kl(mean_p, var_p, mean_q, var_q) -> torch.Tensor:
    """Pointwise :math:`\\mathrm{KL}(\\mathcal N(m_p, v_p) \\,\\|\\, \\mathcal N(m_q, v_q))
    = \\tfrac12\\big(\\log\\tfrac{v_q}{v_p} + \\tfrac{v_p + (m_p - m_q)^2}{v_q} - 1\\big)`."""
    return 0.5 * (torch.log(var_q / var_p) + (var_p + (mean_p - mean_q).pow(2)) / var_q - 1)

"""Metrics of predictive quality: accuracy, NLL, calibration (ECE, reliability bins), Brier score,
predictive entropy, and the Gaussian test log-likelihood and RMSE for regression.

Introduced in the chapter "Data and tools" (``book/data-and-tools.ipynb``).

Conventions, used in every chapter:

* ``probs`` are predictive class probabilities of shape ``(n, K)`` whose rows sum to one (within
  ``1e-3``, or ``K`` times the machine epsilon of their dtype if that is larger: bfloat16 and
  float16 probabilities are accepted with the tolerance of their rounding and computed in
  float64); ``y`` are integer labels of shape ``(n,)`` in ``0..K-1``. Pass
  probabilities, not logits (``torch.softmax(logits, -1)``; an ensemble's predictive is the mean of
  its members' probabilities).
* Scalar metrics are returned as Python floats; per-example values (``reduction="none"``,
  :func:`predictive_entropy`) as float64 tensors on the input's device.
* Logarithms are natural: NLL, entropies and log-likelihoods are in nats.
* Inputs may be torch tensors (on any device) or NumPy arrays / nested lists.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "accuracy",
    "nll",
    "expected_calibration_error",
    "brier_score",
    "predictive_entropy",
    "gaussian_log_likelihood",
    "gaussian_mixture_log_likelihood",
    "rmse",
    "calibration_bins",
    "ece_noise_floor",
    "top_label_confidence",
]

_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------


def _tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a torch tensor or a NumPy array, got {type(value).__name__}.") from err


def _float(t: torch.Tensor) -> torch.Tensor:
    """float64 where the device supports it (Apple MPS does not)."""
    return t.to(torch.float32 if t.device.type == "mps" else torch.float64)


def _sum_tolerance(dtype: torch.dtype, num_classes: int, atol: float) -> float:
    """How far a row of ``dtype`` probabilities may sum from one: ``atol``, or ``K * eps`` if that is larger.

    Rounding ``K`` probabilities (or an average of them) to a format with machine epsilon ``eps``
    moves their sum by up to about ``K * eps``: ~0.08 for 10 classes in bfloat16 (``eps = 2**-7``),
    ~0.01 in float16, far below ``atol`` in float32 and float64 unless ``K`` is in the thousands.
    """
    return max(atol, num_classes * torch.finfo(dtype).eps)


def _check_probs(probs: Any, atol: float = 1e-3) -> torch.Tensor:
    """``probs`` as a float64 (float32 on MPS) tensor of shape ``(n, K)``, after checking it holds probabilities.

    Low-precision floats (bfloat16, float16) are accepted and computed in float64; their rows
    may sum to one within the rounding of their format (:func:`_sum_tolerance`).

    Raises:
        TypeError: for a non-floating-point array.
        ValueError: for a wrong shape, NaN/inf, negative entries, or rows that do not sum to one
            (the message names the dtype's tolerance and says to pass probabilities, not logits).
    """
    p = _tensor(probs, "probs")
    if not torch.is_floating_point(p):
        raise TypeError(f"probs must be a floating-point (n, K) array of probabilities, got dtype {p.dtype}.")
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"probs must have shape (n, K) with n >= 1 and K >= 2, got {tuple(p.shape)}.")
    given_dtype = p.dtype
    p = _float(p)
    if not torch.isfinite(p).all():
        raise ValueError("probs contains NaN or infinite values.")
    if (p < 0).any():
        raise ValueError(
            f"probs must be non-negative; the smallest entry is {p.min().item():.3g}. "
            "Pass probabilities (e.g. torch.softmax(logits, -1)), not logits."
        )
    tolerance = _sum_tolerance(given_dtype, p.shape[1], atol)
    worst = (p.sum(1) - 1).abs().max().item()
    if worst > tolerance:
        low_precision = (
            f" If they are probabilities computed in {given_dtype}, compute them (or the ensemble average) in "
            "float32 instead: convert with .float() before averaging."
            if torch.finfo(given_dtype).bits < 32 else ""
        )
        raise ValueError(
            f"each row of probs must sum to 1 (within {tolerance:.3g} for {p.shape[1]} classes in {given_dtype}); "
            f"the worst row is off by {worst:.3g}. Pass probabilities (e.g. torch.softmax(logits, -1)), not "
            f"logits.{low_precision}"
        )
    return p


def _check_labels(y: Any, n: int, num_classes: int, device: torch.device) -> torch.Tensor:
    t = _tensor(y, "y")
    if t.dtype == torch.bool or torch.is_floating_point(t) or torch.is_complex(t):
        raise TypeError(f"y must hold integer class labels, got dtype {t.dtype}; use y.long().")
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) to match probs, got {tuple(t.shape)}.")
    t = t.to(device=device, dtype=torch.int64)
    if (t < 0).any() or (t >= num_classes).any():
        raise ValueError(f"labels must lie in 0..{num_classes - 1}; found {t.min().item()}..{t.max().item()}.")
    return t


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")


def _reduce(values: torch.Tensor, reduction: str):
    if reduction == "mean":
        return values.mean().item()
    if reduction == "sum":
        return values.sum().item()
    return values


def _check_num_bins(num_bins: Any) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}.")
    return int(num_bins)


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------


def top_label_confidence(probs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted class and its probability (the "confidence" of calibration metrics).

    Args:
        probs: ``(n, K)`` class probabilities.

    Returns:
        ``(confidence, prediction)``: float64 ``(n,)`` and int64 ``(n,)``.
    """
    p = _check_probs(probs)
    confidence, prediction = p.max(dim=1)
    return confidence, prediction


def accuracy(probs: Any, y: Any) -> float:
    """Fraction of examples whose most probable class is the label.

    $$ \\mathrm{acc} = \\frac1n \\sum_{i=1}^n \\mathbb 1[\\arg\\max_k p_{ik} = y_i]. $$

    Ties go to the lowest class index (``argmax``). Introduced in "Data and tools".

    Args:
        probs: ``(n, K)`` class probabilities.
        y: ``(n,)`` integer labels.

    Returns:
        The accuracy in ``[0, 1]``.

    Raises:
        ValueError, TypeError: on malformed ``probs`` or ``y`` (see the module docstring).
    """
    p = _check_probs(probs)
    labels = _check_labels(y, p.shape[0], p.shape[1], p.device)
    return (p.argmax(dim=1) == labels).double().mean().item()


def nll(probs: Any, y: Any, reduction: str = "mean"):
    """Negative log-likelihood of the labels under the predictive (nats).

    $$ \\mathrm{NLL} = -\\frac1n \\sum_{i=1}^n \\log p_{i y_i}. $$

    A zero probability on the true label gives ``inf``: nothing is clipped. Introduced in
    "Data and tools".

    Args:
        probs: ``(n, K)`` class probabilities.
        y: ``(n,)`` integer labels.
        reduction: ``"mean"`` (default), ``"sum"``, or ``"none"`` for the ``(n,)`` per-example values.

    Returns:
        A float, or a float64 tensor of shape ``(n,)`` for ``reduction="none"``.
    """
    _check_reduction(reduction)
    p = _check_probs(probs)
    labels = _check_labels(y, p.shape[0], p.shape[1], p.device)
    values = -torch.log(p.gather(1, labels[:, None]).squeeze(1))
    return _reduce(values, reduction)


def brier_score(probs: Any, y: Any) -> float:
    """Multi-class Brier score: squared error to the one-hot label, summed over classes.

    $$ \\mathrm{BS} = \\frac1n \\sum_{i=1}^n \\sum_{k=1}^K (p_{ik} - \\mathbb 1[y_i = k])^2
       \\in [0, 2], $$

    Brier's (1950) original definition {cite:p}`brier1950verification` (some libraries divide it by
    ``K``, or score only the predicted class; we do neither). Introduced in "Data and tools".

    Args:
        probs: ``(n, K)`` class probabilities.
        y: ``(n,)`` integer labels.

    Returns:
        The Brier score.
    """
    p = _check_probs(probs)
    labels = _check_labels(y, p.shape[0], p.shape[1], p.device)
    one_hot = torch.nn.functional.one_hot(labels, p.shape[1]).to(p.dtype)
    return ((p - one_hot) ** 2).sum(dim=1).mean().item()


def predictive_entropy(probs: Any) -> torch.Tensor:
    """Entropy of each predictive distribution, in nats, with ``0 log 0 = 0``.

    $$ H_i = -\\sum_{k=1}^K p_{ik} \\log p_{ik} \\in [0, \\log K]. $$

    Introduced in "Data and tools".

    Args:
        probs: ``(n, K)`` class probabilities.

    Returns:
        A float64 tensor of shape ``(n,)`` (average it for a summary).
    """
    p = _check_probs(probs)
    return torch.special.entr(p).sum(dim=1)


def calibration_bins(confidence: Any, correct: Any, num_bins: int = 15) -> dict[str, np.ndarray]:
    """Group predictions into equal-width confidence bins: the data of a reliability diagram.

    Bin ``b`` (``b = 1..B``) holds the predictions whose confidence lies in
    ``((b - 1)/B, b/B]``; a confidence of exactly 0 goes to the first bin. For each bin it returns
    the number of predictions ``n_b``, their mean confidence ``conf_b`` and their accuracy
    ``acc_b`` {cite:p}`naeini2015ece,guo2017calibration`. Introduced in "Data and tools"; used by
    :func:`bdk.plotting.reliability_diagram` and :func:`expected_calibration_error`.

    Args:
        confidence: ``(n,)`` probabilities in ``[0, 1]`` (usually the top-label confidence).
        correct: ``(n,)`` booleans or 0/1: whether each prediction was right.
        num_bins: number of equal-width bins ``B`` on ``[0, 1]``.

    Returns:
        A dict of NumPy arrays: ``"edges"`` ``(B + 1,)``, ``"count"`` int64 ``(B,)``, and
        ``"confidence"``, ``"accuracy"`` float64 ``(B,)`` (NaN in empty bins).

    Raises:
        ValueError: shapes differ, confidences outside ``[0, 1]`` or not finite, ``correct`` not
            0/1, or ``num_bins < 1``.
    """
    num_bins = _check_num_bins(num_bins)
    c = _tensor(confidence, "confidence")
    ok = _tensor(correct, "correct")
    if c.ndim != 1 or c.shape[0] == 0:
        raise ValueError(f"confidence must have shape (n,) with n >= 1, got {tuple(c.shape)}.")
    if ok.shape != c.shape:
        raise ValueError(f"correct must have the shape of confidence {tuple(c.shape)}, got {tuple(ok.shape)}.")
    if not (torch.is_floating_point(c) or c.dtype in (torch.int64, torch.int32, torch.uint8)):
        raise TypeError(f"confidence must be a real-valued array, got dtype {c.dtype}.")
    c = _float(c).cpu().to(torch.float64)
    if not torch.isfinite(c).all() or (c < 0).any() or (c > 1).any():
        raise ValueError("confidence must be finite and lie in [0, 1].")
    ok = ok.cpu()
    if ok.dtype != torch.bool:
        if not ((ok == 0) | (ok == 1)).all():
            raise ValueError("correct must hold booleans or 0/1 values.")
    ok = ok.to(torch.float64)
    edges = torch.linspace(0.0, 1.0, num_bins + 1, dtype=torch.float64)
    # bucketize(right=False) gives i with edges[i] < c <= edges[i + 1] on the inner edges.
    index = torch.bucketize(c, edges[1:-1], right=False)
    count = torch.bincount(index, minlength=num_bins)
    conf_sum = torch.bincount(index, weights=c, minlength=num_bins)
    acc_sum = torch.bincount(index, weights=ok, minlength=num_bins)
    nonempty = count > 0
    nan = torch.full((num_bins,), float("nan"), dtype=torch.float64)
    mean_conf = torch.where(nonempty, conf_sum / count.clamp(min=1), nan)
    mean_acc = torch.where(nonempty, acc_sum / count.clamp(min=1), nan)
    return {
        "edges": edges.numpy(),
        "count": count.numpy().astype(np.int64),
        "confidence": mean_conf.numpy(),
        "accuracy": mean_acc.numpy(),
    }


def expected_calibration_error(probs: Any, y: Any, num_bins: int = 15) -> float:
    """Expected calibration error with equal-width bins and the top-label confidence.

    $$ \\mathrm{ECE} = \\sum_{b=1}^{B} \\frac{n_b}{n}\\, \\bigl|\\mathrm{acc}_b - \\mathrm{conf}_b\\bigr|, $$

    where bin ``b`` holds the predictions whose confidence ``max_k p_ik`` lies in
    ``((b - 1)/B, b/B]``, ``acc_b`` is their accuracy and ``conf_b`` their mean confidence
    {cite:p}`naeini2015ece,guo2017calibration`. A perfectly calibrated predictor has an ECE near,
    but not at, zero: each bin's accuracy is a binomial average, so a finite test set gives an ECE of
    about ``sum_b (n_b/n) sqrt(2/pi) sqrt(conf_b (1 - conf_b) / n_b)``. Introduced in
    "Data and tools".

    Args:
        probs: ``(n, K)`` class probabilities.
        y: ``(n,)`` integer labels.
        num_bins: number of bins ``B`` (15, as in Guo et al. 2017).

    Returns:
        The ECE in ``[0, 1]``.
    """
    num_bins = _check_num_bins(num_bins)
    p = _check_probs(probs)
    labels = _check_labels(y, p.shape[0], p.shape[1], p.device)
    confidence, prediction = p.max(dim=1)
    bins = calibration_bins(confidence, prediction == labels, num_bins)
    mask = bins["count"] > 0
    weights = bins["count"][mask] / p.shape[0]
    return float(np.sum(weights * np.abs(bins["accuracy"][mask] - bins["confidence"][mask])))


def ece_noise_floor(confidence: Any, num_bins: int = 15) -> tuple[float, float]:
    r"""Expected ECE, and its standard deviation, of a *calibrated* predictor with these confidences.

    If prediction ``i`` is right with probability ``c_i`` (calibration), then in bin ``b`` the gap
    ``acc_b - conf_b`` has mean 0 and variance ``s_b^2 = sum_{i in b} c_i (1 - c_i) / n_b^2``, and
    is close to normal for bins of more than a few dozen predictions. With
    ``E|Z| = sqrt(2/pi) s`` and ``Var|Z| = (1 - 2/pi) s^2`` for ``Z ~ N(0, s^2)``:

    $$ \mathbb E[\mathrm{ECE}] \approx \sum_b \frac{n_b}{n} \sqrt{\tfrac{2}{\pi}}\, s_b, \qquad
       \mathrm{SD}[\mathrm{ECE}] \approx \Bigl(\sum_b \frac{n_b^2}{n^2} \bigl(1 - \tfrac{2}{\pi}\bigr) s_b^2\Bigr)^{1/2}. $$

    An ECE within a few SDs of this floor cannot be told from perfect calibration at this test-set
    size. Uses the bins of :func:`calibration_bins`. Introduced in "Data and tools".

    Args:
        confidence: ``(n,)`` top-label confidences in ``[0, 1]``.
        num_bins: number of equal-width bins.

    Returns:
        ``(expected_ece, sd_ece)``.
    """
    num_bins = _check_num_bins(num_bins)
    c = _tensor(confidence, "confidence")
    if c.ndim != 1 or c.shape[0] == 0 or not torch.is_floating_point(c):
        raise ValueError(f"confidence must be a float tensor of shape (n,) with n >= 1, got {c.dtype} {tuple(c.shape)}.")
    c = c.cpu().to(torch.float64)
    if not torch.isfinite(c).all() or (c < 0).any() or (c > 1).any():
        raise ValueError("confidence must be finite and lie in [0, 1].")
    edges = torch.linspace(0.0, 1.0, num_bins + 1, dtype=torch.float64)
    index = torch.bucketize(c, edges[1:-1], right=False)
    variance_sum = torch.bincount(index, weights=c * (1 - c), minlength=num_bins)  # n_b^2 s_b^2
    n = c.shape[0]
    expected = math.sqrt(2 / math.pi) * variance_sum.sqrt().sum().item() / n
    sd = math.sqrt((1 - 2 / math.pi) * variance_sum.sum().item()) / n
    return expected, sd


# ----------------------------------------------------------------------------------------------
# Regression
# ----------------------------------------------------------------------------------------------


def _check_regression(name_values: list[tuple[str, Any]]) -> list[torch.Tensor]:
    tensors = []
    for name, value in name_values:
        t = _tensor(value, name)
        if not (torch.is_floating_point(t) or t.dtype in (torch.int64, torch.int32)):
            raise TypeError(f"{name} must be real-valued, got dtype {t.dtype}.")
        tensors.append(t)
    shape = tensors[-1].shape
    if len(shape) != 1 or shape[0] == 0:
        raise ValueError(f"y must have shape (n,) with n >= 1, got {tuple(shape)}; flatten (n, 1) targets with y.reshape(-1).")
    device = tensors[-1].device
    out = []
    for (name, _), t in zip(name_values, tensors):
        if t.shape != shape:
            raise ValueError(f"{name} must have the shape of y {tuple(shape)}, got {tuple(t.shape)}.")
        t = _float(t.to(device))
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or infinite values.")
        out.append(t)
    return out


def gaussian_log_likelihood(mean: Any, var: Any, y: Any, reduction: str = "mean"):
    """Log-likelihood of regression targets under Gaussian predictive distributions (nats).

    $$ \\frac1n \\sum_{i=1}^n \\log N(y_i \\mid \\mu_i, \\sigma_i^2)
       = \\frac1n \\sum_{i=1}^n \\Bigl[-\\tfrac12 \\log(2\\pi\\sigma_i^2) - \\frac{(y_i - \\mu_i)^2}{2\\sigma_i^2}\\Bigr], $$

    the "average test log-likelihood per example" of Hernandez-Lobato & Adams (2015)
    {cite:p}`hernandez2015pbp` and Table 5 of {cite:t}`korattikara2015bdk`. It is scale-dependent:
    for targets standardised by ``y_std`` (:func:`bdk.data.load_boston`), the value in the original
    units is this one minus ``log(y_std)``. Introduced in "Data and tools".

    Args:
        mean: ``(n,)`` predictive means.
        var: ``(n,)`` predictive variances (positive; include the observation noise).
        y: ``(n,)`` targets.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Returns:
        A float, or a float64 ``(n,)`` tensor for ``reduction="none"``.

    Raises:
        ValueError: shapes differ, non-finite values, or a variance that is not positive.
    """
    _check_reduction(reduction)
    m, v, t = _check_regression([("mean", mean), ("var", var), ("y", y)])
    if (v <= 0).any():
        raise ValueError(f"var must be positive; the smallest variance is {v.min().item():.3g}.")
    values = -0.5 * torch.log(2 * math.pi * v) - (t - m) ** 2 / (2 * v)
    return _reduce(values, reduction)


def gaussian_mixture_log_likelihood(means: Any, vars: Any, y: Any, reduction: str = "mean"):
    """Log-likelihood under an equally weighted mixture of Gaussians (an ensemble's predictive).

    $$ \\log p(y_i) = \\log \\frac1S \\sum_{s=1}^S N(y_i \\mid \\mu_{si}, \\sigma_{si}^2), $$

    computed with ``logsumexp``. With ``S = 1`` it equals :func:`gaussian_log_likelihood`.
    Introduced in "Data and tools".

    Args:
        means: ``(S, n)`` means of the ``S`` members.
        vars: ``(S, n)`` variances of the members (positive).
        y: ``(n,)`` targets.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Returns:
        A float, or a float64 ``(n,)`` tensor for ``reduction="none"``.
    """
    _check_reduction(reduction)
    t = _tensor(y, "y")
    mu, var = _tensor(means, "means"), _tensor(vars, "vars")
    if t.ndim != 1 or mu.ndim != 2 or mu.shape[1] != t.shape[0] or var.shape != mu.shape or mu.shape[0] == 0:
        raise ValueError(
            f"means and vars must have shape (S, n) and y shape (n,); got {tuple(mu.shape)}, {tuple(var.shape)}, {tuple(t.shape)}."
        )
    s = mu.shape[0]
    m, v, t = _check_regression([("means", mu.reshape(-1)), ("vars", var.reshape(-1)), ("y", t.repeat(s))])
    if (v <= 0).any():
        raise ValueError(f"vars must be positive; the smallest variance is {v.min().item():.3g}.")
    component = (-0.5 * torch.log(2 * math.pi * v) - (t - m) ** 2 / (2 * v)).reshape(s, -1)
    values = torch.logsumexp(component, dim=0) - math.log(s)
    return _reduce(values, reduction)


def rmse(mean: Any, y: Any) -> float:
    """Root-mean-squared error of point predictions.

    $$ \\mathrm{RMSE} = \\sqrt{\\frac1n \\sum_{i=1}^n (y_i - \\mu_i)^2}. $$

    Scale-dependent: multiply by ``y_std`` to report standardised targets in their original units.
    Introduced in "Data and tools".

    Args:
        mean: ``(n,)`` predictions.
        y: ``(n,)`` targets.

    Returns:
        The RMSE.
    """
    m, t = _check_regression([("mean", mean), ("y", y)])
    return torch.sqrt(((t - m) ** 2).mean()).item()

"""Tests of bdk.metrics: values computed by hand, reference formulas (scipy), properties, and a
statistical check of the expected calibration error of a calibrated predictor."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from scipy import stats

from bdk import metrics

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# A tiny example worked out by hand (also shown in the "Data and tools" chapter).
PROBS = [[0.70, 0.20, 0.10], [0.10, 0.50, 0.40], [0.30, 0.30, 0.40], [0.25, 0.60, 0.15]]
LABELS = [0, 2, 0, 1]
# predictions 0, 1, 2, 1 -> correct, wrong, wrong, correct


@pytest.fixture(params=DEVICES)
def example(request):
    device = request.param
    return torch.tensor(PROBS, device=device), torch.tensor(LABELS, device=device)


# ---------------------------------------------------------------------------------------------
# Values computed by hand
# ---------------------------------------------------------------------------------------------


def test_accuracy_by_hand(example):
    probs, y = example
    assert metrics.accuracy(probs, y) == pytest.approx(0.5)


def test_nll_by_hand(example):
    probs, y = example
    expected = -(math.log(0.7) + math.log(0.4) + math.log(0.3) + math.log(0.6)) / 4
    assert metrics.nll(probs, y) == pytest.approx(expected, rel=1e-6)
    assert metrics.nll(probs, y, reduction="sum") == pytest.approx(4 * expected, rel=1e-6)
    per = metrics.nll(probs, y, reduction="none")
    assert per.shape == (4,) and per.dtype == torch.float64 and per.device == probs.device
    assert per[1].item() == pytest.approx(-math.log(0.4), rel=1e-6)


def test_brier_by_hand(example):
    probs, y = example
    rows = [
        0.3**2 + 0.2**2 + 0.1**2,  # label 0
        0.1**2 + 0.5**2 + 0.6**2,  # label 2
        0.7**2 + 0.3**2 + 0.4**2,  # label 0
        0.25**2 + 0.4**2 + 0.15**2,  # label 1
    ]
    assert metrics.brier_score(probs, y) == pytest.approx(sum(rows) / 4, rel=1e-6)  # 0.43625
    assert sum(rows) / 4 == pytest.approx(0.43625)


def test_entropy_by_hand(example):
    probs, _ = example
    h = metrics.predictive_entropy(probs)
    expected = [-sum(p * math.log(p) for p in row) for row in PROBS]
    assert h.shape == (4,) and h.device == probs.device
    np.testing.assert_allclose(h.cpu().numpy(), expected, rtol=1e-6)


def test_ece_by_hand(example):
    probs, y = example
    # confidences 0.7, 0.5, 0.4, 0.6 with correct = 1, 0, 0, 1.
    # B = 1: |acc - conf| = |0.5 - 0.55| = 0.05.
    assert metrics.expected_calibration_error(probs, y, num_bins=1) == pytest.approx(0.05, abs=1e-6)
    # B = 2: bin (0, .5] holds 0.5 and 0.4 (both wrong): |0 - 0.45|; bin (.5, 1] holds 0.7 and 0.6
    # (both right): |1 - 0.65|. ECE = 0.5 * 0.45 + 0.5 * 0.35 = 0.4 (0.5 falls in the lower bin).
    assert metrics.expected_calibration_error(probs, y, num_bins=2) == pytest.approx(0.40, abs=1e-6)
    # B = 4: bins (.25,.5] -> {0.5, 0.4} wrong; (.5,.75] -> {0.7, 0.6} right: same as B = 2.
    assert metrics.expected_calibration_error(probs, y, num_bins=4) == pytest.approx(0.40, abs=1e-6)


def test_calibration_bins_by_hand():
    bins = metrics.calibration_bins([0.0, 0.2, 0.25, 0.3, 1.0], [1, 0, 1, True, 0], num_bins=4)
    np.testing.assert_allclose(bins["edges"], [0, 0.25, 0.5, 0.75, 1.0])
    # 0.0, 0.2 and 0.25 in (0, .25] (0 joins the first bin); 0.3 in (.25, .5]; 1.0 in the last bin.
    np.testing.assert_array_equal(bins["count"], [3, 1, 0, 1])
    np.testing.assert_allclose(bins["confidence"][[0, 1, 3]], [0.15, 0.3, 1.0])
    np.testing.assert_allclose(bins["accuracy"][[0, 1, 3]], [2 / 3, 1.0, 0.0])
    assert np.isnan(bins["confidence"][2]) and np.isnan(bins["accuracy"][2])
    assert bins["count"].dtype == np.int64


def test_gaussian_log_likelihood_matches_scipy():
    rng = np.random.default_rng(0)
    mean, var, y = rng.normal(size=50), rng.uniform(0.1, 3.0, size=50), rng.normal(size=50)
    expected = stats.norm.logpdf(y, loc=mean, scale=np.sqrt(var))
    assert metrics.gaussian_log_likelihood(mean, var, y) == pytest.approx(expected.mean(), rel=1e-12)
    per = metrics.gaussian_log_likelihood(torch.tensor(mean), torch.tensor(var), torch.tensor(y), reduction="none")
    np.testing.assert_allclose(per.numpy(), expected, rtol=1e-12)
    # by hand: y = mean, var = 1 gives -log(2 pi) / 2
    assert metrics.gaussian_log_likelihood([0.0], [1.0], [0.0]) == pytest.approx(-0.5 * math.log(2 * math.pi))


def test_gaussian_log_likelihood_scale_rule():
    # Standardised targets: LL in original units = LL_std - log(y_std) (documented rule).
    rng = np.random.default_rng(1)
    mean, var, y = rng.normal(size=20), rng.uniform(0.5, 2.0, size=20), rng.normal(size=20)
    y_mean, y_std = 22.5, 9.2
    ll_std = metrics.gaussian_log_likelihood(mean, var, y)
    ll_orig = metrics.gaussian_log_likelihood(mean * y_std + y_mean, var * y_std**2, y * y_std + y_mean)
    assert ll_orig == pytest.approx(ll_std - math.log(y_std), rel=1e-12)


def test_gaussian_mixture_log_likelihood():
    rng = np.random.default_rng(2)
    means, variances, y = rng.normal(size=(3, 40)), rng.uniform(0.2, 2.0, size=(3, 40)), rng.normal(size=40)
    pdf = stats.norm.pdf(y[None], loc=means, scale=np.sqrt(variances)).mean(0)
    assert metrics.gaussian_mixture_log_likelihood(means, variances, y) == pytest.approx(np.log(pdf).mean(), rel=1e-10)
    # one member = the Gaussian log-likelihood; identical members = the same value
    single = metrics.gaussian_log_likelihood(means[0], variances[0], y)
    assert metrics.gaussian_mixture_log_likelihood(means[:1], variances[:1], y) == pytest.approx(single, rel=1e-12)
    assert metrics.gaussian_mixture_log_likelihood(np.repeat(means[:1], 5, 0), np.repeat(variances[:1], 5, 0), y) == pytest.approx(
        single, rel=1e-12
    )
    with pytest.raises(ValueError, match="shape"):
        metrics.gaussian_mixture_log_likelihood(means[0], variances[0], y)


def test_rmse_by_hand():
    assert metrics.rmse([1.0, 2.0, 3.0], [2.0, 2.0, 5.0]) == pytest.approx(math.sqrt(5 / 3))
    assert metrics.rmse(torch.zeros(4), torch.zeros(4)) == 0.0


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 10])
def test_uniform_and_one_hot_limits(num_classes):
    n = 7
    y = torch.arange(n) % num_classes
    uniform = torch.full((n, num_classes), 1.0 / num_classes)
    one_hot = torch.nn.functional.one_hot(y, num_classes).float()
    # uniform: NLL = H = log K; Brier = (K - 1)/K
    assert metrics.nll(uniform, y) == pytest.approx(math.log(num_classes), rel=1e-6)
    np.testing.assert_allclose(metrics.predictive_entropy(uniform).numpy(), math.log(num_classes), rtol=1e-6)
    assert metrics.brier_score(uniform, y) == pytest.approx((num_classes - 1) / num_classes, rel=1e-6)
    # perfect one-hot predictions: accuracy 1, NLL 0, Brier 0, entropy 0 (0 log 0 = 0), ECE 0
    assert metrics.accuracy(one_hot, y) == 1.0
    assert metrics.nll(one_hot, y) == 0.0
    assert metrics.brier_score(one_hot, y) == 0.0
    assert torch.all(metrics.predictive_entropy(one_hot) == 0)
    assert metrics.expected_calibration_error(one_hot, y) == 0.0
    # confidently wrong: NLL is infinite (nothing clipped), Brier is 2, ECE is 1
    wrong = torch.nn.functional.one_hot((y + 1) % num_classes, num_classes).float()
    assert metrics.nll(wrong, y) == math.inf
    assert metrics.brier_score(wrong, y) == pytest.approx(2.0)
    assert metrics.expected_calibration_error(wrong, y) == pytest.approx(1.0)


def test_ece_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=2.0, size=(500, 5))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 5, size=500)
    for num_bins in (1, 5, 15, 40):
        conf, pred = probs.max(1), probs.argmax(1)
        ece = 0.0
        for b in range(num_bins):
            lo, hi = b / num_bins, (b + 1) / num_bins
            in_bin = (conf > lo) & (conf <= hi) if b > 0 else (conf <= hi)
            if in_bin.any():
                ece += in_bin.mean() * abs((pred[in_bin] == y[in_bin]).mean() - conf[in_bin].mean())
        assert metrics.expected_calibration_error(probs, y, num_bins=num_bins) == pytest.approx(ece, abs=1e-12)


def test_numpy_and_lists_accepted_and_agree_with_tensors():
    probs_np, y_np = np.array(PROBS), np.array(LABELS)
    for fn in (metrics.accuracy, metrics.nll, metrics.brier_score, metrics.expected_calibration_error):
        assert fn(probs_np, y_np) == pytest.approx(fn(torch.tensor(PROBS), torch.tensor(LABELS)), rel=1e-6)
        assert fn(PROBS, LABELS) == pytest.approx(fn(probs_np, y_np), rel=1e-12)
    assert isinstance(metrics.accuracy(probs_np, y_np), float)


def test_top_label_confidence():
    conf, pred = metrics.top_label_confidence(torch.tensor(PROBS))
    np.testing.assert_allclose(conf.numpy(), [0.7, 0.5, 0.4, 0.6], rtol=1e-6)
    np.testing.assert_array_equal(pred.numpy(), [0, 1, 2, 1])


def test_reliability_diagram_uses_calibration_bins():
    import matplotlib.pyplot as plt

    from bdk.plotting import reliability_diagram

    rng = np.random.default_rng(4)
    conf = rng.uniform(0.5, 1.0, 300)
    ax = reliability_diagram(conf, rng.uniform(size=300) < conf, num_bins=10, label="SGLD")
    assert ax.get_xlabel() and ax.get_ylabel()
    plt.close(ax.figure)


# ---------------------------------------------------------------------------------------------
# The ECE of a calibrated predictor (statistical)
# ---------------------------------------------------------------------------------------------


def _binary_predictions(confidence: np.ndarray, correct: np.ndarray):
    """Two-class probabilities whose top-label confidence is ``confidence`` (>= 0.5)."""
    probs = np.stack([confidence, 1 - confidence], axis=1)
    return probs, np.where(correct, 0, 1)


def _calibrated_ece_reference(confidence: np.ndarray, num_bins: int):
    """Expected ECE of a calibrated predictor and its standard deviation, given the confidences.

    In bin b, acc_b - conf_b is the mean of n_b independent (Bernoulli(c_i) - c_i): mean 0 and
    variance s_b^2 = sum_i c_i (1 - c_i) / n_b^2, approximately normal (n_b in the hundreds).
    E|N(0, s^2)| = sqrt(2/pi) s and Var|N(0, s^2)| = (1 - 2/pi) s^2, and the bins are independent:
        E[ECE]  = sum_b (n_b/n) sqrt(2/pi) s_b,   SD[ECE] = sqrt(sum_b (n_b/n)^2 (1 - 2/pi) s_b^2).
    """
    n = len(confidence)
    index = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins)
    bernoulli_var = np.bincount(index, weights=confidence * (1 - confidence), minlength=num_bins)
    s = np.sqrt(bernoulli_var[count > 0]) / count[count > 0]
    w = count[count > 0] / n
    return float(np.sum(w * math.sqrt(2 / math.pi) * s)), float(math.sqrt(np.sum(w**2 * (1 - 2 / math.pi) * s**2)))


def test_ece_of_calibrated_predictor_is_at_its_noise_floor():
    rng = np.random.default_rng(5)
    n, num_bins = 5000, 15
    confidence = rng.uniform(0.5, 1.0, n)
    correct = rng.uniform(size=n) < confidence  # calibrated: P(correct | c) = c
    ece = metrics.expected_calibration_error(*_binary_predictions(confidence, correct), num_bins=num_bins)
    floor, sd = _calibrated_ece_reference(confidence, num_bins)
    assert metrics.ece_noise_floor(torch.tensor(confidence), num_bins) == pytest.approx((floor, sd), rel=1e-10)
    # floor ~ 0.014, sd ~ 0.004: a calibrated predictor stays below floor + 4 sd.
    assert ece < floor + 4 * sd, (ece, floor, sd)

    # Overconfident by 0.1: P(correct | c) = c - 0.1 in every bin, so ECE ~ 0.1 (each bin's gap is
    # ~N(-0.1, s_b^2) with s_b ~ 0.02, far from 0), well above the calibrated floor.
    confidence = rng.uniform(0.6, 1.0, n)
    correct = rng.uniform(size=n) < confidence - 0.1
    ece_bad = metrics.expected_calibration_error(*_binary_predictions(confidence, correct), num_bins=num_bins)
    floor_bad, sd_bad = _calibrated_ece_reference(confidence, num_bins)
    assert ece_bad > floor_bad + 4 * sd_bad + 0.05
    # SD of the gap (no absolute value) is sqrt(sum_b (n_b/n)^2 s_b^2) <= sd_bad / sqrt(1 - 2/pi).
    assert abs(ece_bad - 0.1) < 4 * sd_bad / math.sqrt(1 - 2 / math.pi)


@pytest.mark.slow  # 200 replications
def test_mean_ece_of_calibrated_predictor_matches_theory():
    # 200 replications of n = 2000: the mean ECE equals the predicted E[ECE] within 4 standard
    # errors of the mean (SE = sd(ECE) / sqrt(200) ~ 0.0006 against E[ECE] ~ 0.024), so a binning or
    # weighting error of a few percent would fail.
    rng = np.random.default_rng(6)
    n, num_bins, reps = 2000, 15, 200
    eces, floors = [], []
    for _ in range(reps):
        confidence = rng.uniform(0.5, 1.0, n)
        correct = rng.uniform(size=n) < confidence
        eces.append(metrics.expected_calibration_error(*_binary_predictions(confidence, correct), num_bins=num_bins))
        floors.append(_calibrated_ece_reference(confidence, num_bins)[0])
    eces = np.array(eces)
    se = eces.std(ddof=1) / math.sqrt(reps)
    assert abs(eces.mean() - np.mean(floors)) < 4 * se, (eces.mean(), np.mean(floors), se)


# ---------------------------------------------------------------------------------------------
# Argument errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "probs, error, match",
    [
        ([[0.5, 0.6], [0.5, 0.5]], ValueError, "sum to 1"),
        ([[2.0, -1.0], [0.5, 0.5]], ValueError, "non-negative"),
        ([[float("nan"), 0.5], [0.5, 0.5]], ValueError, "NaN"),
        ([0.5, 0.5], ValueError, r"shape \(n, K\)"),
        ([[1.0], [1.0]], ValueError, "K >= 2"),
        ([[1, 0], [0, 1]], TypeError, "floating-point"),
    ],
)
def test_bad_probs(probs, error, match):
    probs = torch.tensor(probs)
    with pytest.raises(error, match=match):
        metrics.accuracy(probs, torch.tensor([0, 1][: probs.shape[0] if probs.ndim else 2]))


def test_logits_are_rejected_with_advice():
    with pytest.raises(ValueError, match="not logits"):
        metrics.nll(torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([0]))


@pytest.mark.parametrize(
    "labels, error, match",
    [
        ([0.0, 1.0, 2.0, 0.0], TypeError, "integer"),
        ([True, False, True, False], TypeError, "integer"),
        ([0, 1, 3, 0], ValueError, r"0\.\.2"),
        ([0, -1, 1, 0], ValueError, r"0\.\.2"),
        ([0, 1, 2], ValueError, r"shape \(4,\)"),
        ([[0], [1], [2], [0]], ValueError, r"shape \(4,\)"),
    ],
)
def test_bad_labels(labels, error, match):
    for fn in (metrics.accuracy, metrics.nll, metrics.brier_score, metrics.expected_calibration_error):
        with pytest.raises(error, match=match):
            fn(torch.tensor(PROBS), torch.tensor(labels))


def test_bad_bins_and_reductions():
    with pytest.raises(ValueError, match="num_bins"):
        metrics.expected_calibration_error(PROBS, LABELS, num_bins=0)
    with pytest.raises(ValueError, match="reduction"):
        metrics.nll(PROBS, LABELS, reduction="avg")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.calibration_bins([0.5, 1.2], [1, 0], 10)
    with pytest.raises(ValueError, match="0/1"):
        metrics.calibration_bins([0.5, 0.7], [1, 2], 10)
    with pytest.raises(ValueError, match="shape"):
        metrics.calibration_bins([0.5, 0.7], [1, 0, 1], 10)


def test_bad_regression_inputs():
    with pytest.raises(ValueError, match="positive"):
        metrics.gaussian_log_likelihood([0.0, 1.0], [1.0, 0.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        metrics.gaussian_log_likelihood([0.0, 1.0], [1.0, 1.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="flatten"):
        metrics.rmse(torch.zeros(3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="NaN"):
        metrics.rmse([0.0, float("nan")], [0.0, 1.0])

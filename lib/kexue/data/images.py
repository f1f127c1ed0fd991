"""Image data sets that work offline: Fashion-MNIST (Debian ``dataset-fashion-mnist``) and
scikit-learn's bundled 8×8 digits.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, https://github.com/zalandoresearch/fashion-mnist) is read
from the Debian package's idx gz files with numpy alone; each file's sha256 is checked. The digits
(1,797 images shipped inside scikit-learn) stand in where Fashion-MNIST is absent (CI, smoke runs).
Used by the chapter ``wgan-critique`` (https://kexue.fm/archives/8244).
"""
from __future__ import annotations

import gzip
import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import MissingDataError
from .sources import sha256_file

FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_VERSION = "0.0~git20200523.55506a9-1"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = f"sudo apt-get install {FASHION_MNIST_PACKAGE}"
FASHION_MNIST_FILES = {  # split -> (images file, labels file)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_MNIST_SIZES = {"train": 60_000, "test": 10_000}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def parse_idx(raw: bytes) -> np.ndarray:
    """Decode one (uncompressed) idx file: magic ``00 00 <dtype> <ndim>``, ``ndim`` big-endian
    uint32 sizes, then the data in C order (LeCun's MNIST format, used by Fashion-MNIST).
    Used by :func:`load_fashion_mnist` (chapter ``wgan-critique``, https://kexue.fm/archives/8244)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError("not an idx file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"idx file size does not match its header shape {shape}")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape).astype(
        dtype.newbyteorder("="))


def fashion_mnist_files(root: str | Path | None = None, *, verify: bool = True) -> dict[str, Path]:
    """Paths of the four Fashion-MNIST files under ``root`` (default: the Debian package's folder),
    each checked against its pinned sha256; a missing file raises :class:`MissingDataError` naming
    ``sudo apt-get install dataset-fashion-mnist``."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    paths = {}
    for name, digest in FASHION_MNIST_SHA256.items():
        p = root / name
        if not p.is_file():
            raise MissingDataError(
                f"Fashion-MNIST is not installed (no {name} in {root}); install the Debian package "
                f"{FASHION_MNIST_PACKAGE} (version {FASHION_MNIST_VERSION}) with: {FASHION_MNIST_INSTALL}")
        if verify and sha256_file(p) != digest:
            raise MissingDataError(f"{name} in {root} does not have the pinned sha256 {digest[:12]}…; "
                                   f"reinstall it with: {FASHION_MNIST_INSTALL}")
        paths[name] = p
    return paths


def fashion_mnist_available(root: str | Path | None = None) -> bool:
    """Whether the four Fashion-MNIST files are present (no checksum check); chapter wgan-critique
    (https://kexue.fm/archives/8244) and its tests use it to skip cleanly."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    return all((root / name).is_file() for name in FASHION_MNIST_SHA256)


@lru_cache(maxsize=4)
def _load_fashion_mnist(split: str, root: str | None) -> tuple[np.ndarray, np.ndarray]:
    paths = fashion_mnist_files(root)
    img_name, lab_name = FASHION_MNIST_FILES[split]
    images = parse_idx(gzip.decompress(paths[img_name].read_bytes()))
    labels = parse_idx(gzip.decompress(paths[lab_name].read_bytes()))
    if images.shape != (FASHION_MNIST_SIZES[split], 28, 28) or labels.shape != (FASHION_MNIST_SIZES[split],):
        raise ValueError(f"unexpected Fashion-MNIST {split} shapes {images.shape}, {labels.shape}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist(split: str = "train", root: str | Path | None = None, *,
                       flatten: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` ("train": 60,000, "test": 10,000) as ``(X, y)``: ``X`` float32 in
    [0, 1] of shape (n, 28, 28) (or (n, 784) with ``flatten``), ``y`` int64 labels 0..9
    (names in ``FASHION_MNIST_CLASSES``). Reads the Debian package ``dataset-fashion-mnist``;
    chapter ``wgan-critique`` (https://kexue.fm/archives/8244)."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")
    images, labels = _load_fashion_mnist(split, None if root is None else str(root))
    X = images.astype(np.float32) / 255.0
    return (X.reshape(len(X), -1) if flatten else X), labels.astype(np.int64)


# sha256 of sklearn's bundled 8×8 digits (float64 features then int64 labels), checked on load.
DIGITS_SHA256 = "f6d9e39f37dc45d327f6db33428ee58970ccceabb2535a5c179de35886b70443"


def load_digits(check: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits as sklearn gives them: ``X`` float64 (1797, 64), pixel
    values 0..16, ``y`` int64 labels 0..9, checked against :data:`DIGITS_SHA256`. The one digits
    loader: :func:`load_digits_images` (chapter ``wgan-critique``) and
    :func:`kexue.train.load_digits_split` (chapter ``xavier-averaging``) stand on it
    (https://kexue.fm/archives/8244, https://kexue.fm/archives/8725)."""
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:
        raise MissingDataError("the digits data ship with scikit-learn: run "
                               "`.venv/bin/pip install scikit-learn==1.9.1` (or `make setup`)") from err
    X, y = _sk_load_digits(return_X_y=True)
    if check and hashlib.sha256(X.astype(np.float64).tobytes() + y.astype(np.int64).tobytes()
                                ).hexdigest() != DIGITS_SHA256:
        raise MissingDataError("sklearn's bundled digits do not match the pinned checksum; install "
                               "scikit-learn==1.9.1 (requirements.txt)")
    return X, y.astype(np.int64)


def load_digits_images(*, flatten: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits (1,797 images, pixel values 0..16) as ``(X, y)``: ``X``
    float32 in [0, 1] (value / 16), shape (1797, 8, 8) or (1797, 64); ``y`` int64 labels 0..9.
    The smoke-scale stand-in for Fashion-MNIST in chapter ``wgan-critique``
    (https://kexue.fm/archives/8244)."""
    X, y = load_digits()
    X = (X.reshape(-1, 8, 8) / 16.0).astype(np.float32)
    return (X.reshape(len(X), -1) if flatten else X), y


def load_image_dataset(name: str, *, flatten: bool = True) -> dict:
    """A train/test pair of an image set by name: ``"fashion-mnist"`` (the package's own split) or
    ``"digits"`` (a fixed stratified 75/25 split, seed 0). Returns ``{"X_train", "y_train",
    "X_test", "y_test", "shape", "classes"}``; chapter ``wgan-critique`` (https://kexue.fm/archives/8244)."""
    if name == "fashion-mnist":
        X_tr, y_tr = load_fashion_mnist("train", flatten=flatten)
        X_te, y_te = load_fashion_mnist("test", flatten=flatten)
        return {"X_train": X_tr, "y_train": y_tr, "X_test": X_te, "y_test": y_te, "shape": (28, 28),
                "classes": FASHION_MNIST_CLASSES}
    if name == "digits":
        from sklearn.model_selection import train_test_split

        X, y = load_digits_images(flatten=flatten)
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
        return {"X_train": X_tr, "y_train": y_tr, "X_test": X_te, "y_test": y_te, "shape": (8, 8),
                "classes": tuple(str(i) for i in range(10))}
    raise ValueError(f"unknown image data set {name!r}: use 'fashion-mnist' or 'digits'")


def _compose_pairs(X: np.ndarray, y: np.ndarray, n: int, canvas: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """n composites: item A at the top-left and item B at the bottom-right corner of a canvas × canvas
    image (pixel-wise max where they overlap), A and B drawn independently from (X, y)."""
    h, w = X.shape[1:]
    ia = rng.integers(0, len(X), n)
    ib = rng.integers(0, len(X), n)
    out = np.zeros((n, canvas, canvas), dtype=np.float32)
    out[:, :h, :w] = X[ia]
    out[:, canvas - h:, canvas - w:] = np.maximum(out[:, canvas - h:, canvas - w:], X[ib])
    return out, np.stack([y[ia], y[ib]], axis=1).astype(np.int64)


def multi_fashion(n_train: int, n_dev: int, n_test: int, *, source: str = "fashion-mnist", seed: int = 0,
                  size: int = 28, standardize: bool = True) -> dict:
    """Sener & Koltun's MultiMNIST construction (NeurIPS 2018) on Fashion-MNIST: two items, one at the
    top-left and one at the bottom-right of a 36 × 36 canvas (overlapping in the middle), the canvas
    resized to ``size`` × ``size`` (bilinear, antialiased); task 0 is the top-left item's class, task 1
    the bottom-right one's. Training and dev composites are built from disjoint parts of the training
    split (5/6 and 1/6, by a permutation with ``seed``), test composites from the test split.
    ``source="digits"``: scikit-learn's 8 × 8 digits (disjoint 60/20/20 pools) on a 12 × 12 canvas, for
    smoke runs. Returns float32 ``X_train/X_dev/X_test`` of shape (n, 1, size, size) and int64
    ``y_*`` of shape (n, 2); with ``standardize`` the pixels are shifted and scaled by the training
    composites' pixel mean and std (one scalar each). Chapter ``multitask-gradient`` (https://kexue.fm/archives/8896)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    if source == "fashion-mnist":
        Xtr, ytr = load_fashion_mnist("train")
        Xte, yte = load_fashion_mnist("test")
        perm = rng.permutation(len(Xtr))
        cut = len(Xtr) * 5 // 6
        pools = {"train": (Xtr[perm[:cut]], ytr[perm[:cut]]), "dev": (Xtr[perm[cut:]], ytr[perm[cut:]]),
                 "test": (Xte, yte)}
        canvas = 36
    elif source == "digits":
        X, y = load_digits_images()
        perm = rng.permutation(len(X))
        a, b = int(0.6 * len(X)), int(0.8 * len(X))
        pools = {"train": (X[perm[:a]], y[perm[:a]]), "dev": (X[perm[a:b]], y[perm[a:b]]),
                 "test": (X[perm[b:]], y[perm[b:]])}
        canvas = 12
    else:
        raise ValueError(f"unknown source {source!r}: use 'fashion-mnist' or 'digits'")
    out = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        img, lab = _compose_pairs(*pools[split], n, canvas, rng)
        t = torch.from_numpy(img).unsqueeze(1)
        if canvas != size:
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=canvas > size)
        out[f"X_{split}"] = t.contiguous()
        out[f"y_{split}"] = torch.from_numpy(lab)
    if standardize:
        mu, sd = float(out["X_train"].mean()), float(out["X_train"].std())
        for split in ("train", "dev", "test"):
            out[f"X_{split}"] = (out[f"X_{split}"] - mu) / sd
    return out

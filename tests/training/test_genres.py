"""The Shakespeare genre task, on works made here (no download)."""

import numpy as np
import pytest

from training import genres
from training.corpus import Work


def test_every_work_of_the_corpus_has_exactly_one_genre():
    names = [name for group in genres.GENRES.values() for name in group]
    assert len(names) == len(set(names)) == 42  # the corpus's deduplicated works
    assert [genres.genre_of(f"{name}_gut") for name in genres.GENRES["poem"]] == [3] * 5
    with pytest.raises(ValueError, match="No genre for the work 'cardenio_gut'"):
        genres.genre_of("cardenio_gut")


def test_test_works_are_every_fourth_of_each_genre_and_never_trained_on():
    names = [f"{name}_gut" for group in genres.GENRES.values() for name in group]
    train, test = genres.split_works(names)
    assert not set(train) & set(test) and len(train) + len(test) == 42
    assert "hamlet_gut" in test and "rape_of_lucrece_gut" in test
    assert {genres.genre_of(name) for name in test} == {0, 1, 2, 3}


def test_passages_are_whole_lines_within_the_limit():
    text = "\n".join(f"line {i:02d} of verse" for i in range(30))
    chunks = genres.passages(text, max_characters=60)
    assert "\n".join(chunks) == text
    assert all(len(chunk) <= 60 for chunk in chunks)
    assert genres.passages("x" * 80, max_characters=60) == ["x" * 80]


def test_load_genres_labels_passages_by_their_work():
    works = [
        Work(f"{name}_gut", f"{name} speaks.\n" * 40)
        for group in genres.GENRES.values()
        for name in group
    ]
    split = genres.load_genres(works)
    texts, labels = split.test
    assert split.labels == ("comedy", "history", "tragedy", "poem")
    hamlet = np.array(["hamlet speaks" in text for text in texts])
    assert hamlet.any() and (labels[hamlet] == 2).all()
    train_texts = np.concatenate([split.train[0], split.validation[0]])
    assert not any("hamlet speaks" in text for text in train_texts)
    assert len(split.validation[1]) > 0

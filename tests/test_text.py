"""In-graph WordPiece tokenization: vocabulary, round trips, SavedModel export."""

import random
import string

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_switch import text
from tf_switch.text import (
    BOS_ID,
    EOS_ID,
    NL_ID,
    PAD_ID,
    RESERVED_TOKENS,
    UNK_ID,
    WordPieceTokenizer,
    build_vocabulary,
    encode_corpus,
)

VOCAB_SIZE = 300


def _synthetic_play(num_speeches=120, seed=0):
    """A tiny grammar of Shakespeare-like lines, all in canonical form."""
    rng = random.Random(seed)
    speakers = ["HAMLET.", "OPHELIA.", "First Clown.", "KING."]
    subjects = ["I", "thou", "my lord", "the king", "'tis", "good-morrow"]
    verbs = ["hang'd", "o'er-leaps", "loves", "will speak", "shall see", "knows"]
    objects = ["th' sea", "the ghost", "my father's grave", "her", "the players"]
    ends = [".", ",", "!", "?", ";", ":", ".--", "!--"]
    lines = []
    for _ in range(num_speeches):
        lines.append(rng.choice(speakers))
        for _ in range(rng.randint(1, 3)):
            words = [rng.choice(subjects), rng.choice(verbs), rng.choice(objects)]
            line = " ".join(words) + rng.choice(ends)
            if rng.random() < 0.2:
                line = f'He cries "{line}"'
            if rng.random() < 0.2 and not line.endswith("--"):
                line += " (aside) [Exit]"
            lines.append(line[0].upper() + line[1:])
        lines.append("")
    return "\n".join(lines)


CORPUS = _synthetic_play()
# Every printable ASCII character, so that all of them are in the alphabet.
ALPHABET = " ".join(string.ascii_letters + string.digits + string.punctuation)


@pytest.fixture(scope="module")
def vocabulary():
    return build_vocabulary([CORPUS, ALPHABET], vocab_size=VOCAB_SIZE)


@pytest.fixture(scope="module")
def tokenizer(vocabulary):
    return WordPieceTokenizer(vocabulary)


def _round_trip(tokenizer, strings):
    ids = tokenizer.tokenize(tf.constant(strings))
    return [s.decode() for s in tokenizer.detokenize(ids).numpy()]


def test_vocabulary_starts_with_reserved_tokens_and_fits(vocabulary):
    assert tuple(vocabulary[: len(RESERVED_TOKENS)]) == RESERVED_TOKENS
    ids = [PAD_ID, UNK_ID, BOS_ID, EOS_ID, NL_ID]
    assert [vocabulary[i] for i in ids] == ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[NL]"]
    assert PAD_ID == 0
    assert len(vocabulary) <= VOCAB_SIZE
    assert len(set(vocabulary)) == len(vocabulary)
    # Case kept; whole frequent words and in-word apostrophes learned.
    assert {"HAMLET", "the", "##'"} <= set(vocabulary)
    # Punctuation that always stands alone has no `##` form.
    assert "," in vocabulary and "##," not in vocabulary


def test_small_vocabulary_keeps_every_character():
    small = build_vocabulary([CORPUS, ALPHABET], vocab_size=200)
    assert len(small) <= 200
    assert set(string.printable.strip()) <= set(small)
    assert {"##" + c for c in string.ascii_letters + "'-"} <= set(small)


def test_vocabulary_arguments_are_validated():
    with pytest.raises(ValueError, match="Raise `vocab_size`"):
        build_vocabulary([CORPUS], vocab_size=50)
    with pytest.raises(TypeError, match="list of str"):
        build_vocabulary(CORPUS)
    with pytest.raises(ValueError, match="without a single word"):
        build_vocabulary(["  \n "])
    with pytest.raises(ValueError, match="must start with the reserved tokens"):
        WordPieceTokenizer(["[UNK]", "[PAD]", "[BOS]", "[EOS]", "[NL]", "a"])


def test_canonical_text_round_trips_exactly(tokenizer):
    lines = CORPUS.split("\n")
    assert _round_trip(tokenizer, lines) == lines
    assert _round_trip(tokenizer, [CORPUS]) == [CORPUS]
    ids = tokenizer.tokenize(tf.constant(lines)).flat_values.numpy()
    assert UNK_ID not in ids


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("  To be,  or not\tto be  ", "To be, or not to be"),
        ("a,b ;c ( d ) [ e ]x", "a, b; c (d) [e] x"),
        ("whistle. -- Blow", "whistle.--Blow"),
        ('He said " go , now "', 'He said "go, now"'),
        ("'Go , ' quoth he, 'white . '", "'Go,' quoth he, 'white.'"),
        ("a/b&c = d", "a / b & c = d"),
        ("th' master's good-morrow, 'tis", "th' master's good-morrow, 'tis"),
        ("one  \n\n   two\n", "one\n\ntwo\n"),
        ("one\r\ntwo", "one\ntwo"),
        ("bell\x07rings zero\u200bwidth", "bell rings zerowidth"),
        ("[NL]", "[NL]"),  # Literal brackets, not a newline.
    ],
)
def test_round_trip_normalizes_as_documented(tokenizer, raw, canonical):
    assert _round_trip(tokenizer, [raw]) == [canonical]
    assert _round_trip(tokenizer, [canonical]) == [canonical]


def test_unknown_characters_map_to_unk(tokenizer):
    ids = tokenizer.tokenize(tf.constant(["the \u2603 king", "the", "king"]))
    the, king = ids[1].numpy().tolist(), ids[2].numpy().tolist()
    assert ids[0].numpy().tolist() == the + [UNK_ID] + king
    ids = tokenizer.tokenize(tf.constant(["Zo\u00eb"]))
    # Only the unknown character is lost, not the word around it.
    assert ids[0].numpy().tolist().count(UNK_ID) == 1
    assert _round_trip(tokenizer, ["the \u2603 king", "Zo\u00eb"]) == [
        "the [UNK] king",
        "Zo [UNK]",
    ]


def test_newlines_become_nl_tokens_and_come_back(tokenizer):
    raw = "HAMLET.\nI knows her.\n\n\nKING.\n"
    ids = tokenizer.tokenize(tf.constant([raw]))[0].numpy()
    assert (ids == NL_ID).sum() == raw.count("\n")
    assert ids[-1] == NL_ID
    assert _round_trip(tokenizer, [raw]) == [raw]
    literal = tokenizer.tokenize(tf.constant(["[NL]"]))[0].numpy()
    assert NL_ID not in literal


def test_detokenize_dense_and_ragged_agree_and_drop_specials(tokenizer):
    lines = ["HAMLET.", "I knows her!", "", "Th' sea."]
    ragged = tokenizer.tokenize(tf.constant(lines))
    dense = ragged.to_tensor(default_value=PAD_ID)
    assert dense.shape[1] > min(ragged.row_lengths().numpy())  # Some padding.
    framed = tf.concat(
        [tf.fill([4, 1], BOS_ID), ragged, tf.fill([4, 1], EOS_ID)], axis=1
    )
    for ids in [ragged, dense, tf.cast(dense, tf.int64), framed]:
        assert [s.decode() for s in tokenizer.detokenize(ids).numpy()] == lines


def test_detokenize_reads_a_leading_suffix_piece(tokenizer, vocabulary):
    suffix, word = vocabulary.index("##'"), vocabulary.index("the")
    out = tokenizer.detokenize(tf.ragged.constant([[suffix, word]]))
    assert out.numpy()[0].decode() == "' the"


def test_id_to_token_spells_the_pieces(tokenizer, vocabulary):
    ids = tokenizer.tokenize(tf.constant(["Th' sea.\nI knows"]))
    pieces = [p.decode() for p in tokenizer.id_to_token(ids)[0].numpy()]
    assert pieces == [vocabulary[i] for i in ids[0].numpy()]
    assert "[NL]" in pieces and "." in pieces
    dense = tokenizer.id_to_token(tf.constant([[PAD_ID, 10**6]]))
    assert dense.numpy().tolist() == [[b"[PAD]", b"[UNK]"]]


def test_detokenize_rejects_out_of_range_ids(tokenizer):
    # Without the check, FastWordpiece's detokenizer crashes the process.
    for bad in [[[5, tokenizer.vocab_size]], [[-1, 5]]]:
        with pytest.raises(tf.errors.InvalidArgumentError, match="vocab_size"):
            tokenizer.detokenize(tf.constant(bad))


def test_works_inside_tf_function(tokenizer):
    tokenize = tf.function(
        tokenizer.tokenize, input_signature=[tf.TensorSpec([None], tf.string)]
    )
    detokenize = tf.function(
        tokenizer.detokenize,
        input_signature=[tf.RaggedTensorSpec([None, None], tf.int32)],
    )
    lines = CORPUS.split("\n")[:20]
    ids = tokenize(tf.constant(lines))
    assert ids.to_list() == tokenizer.tokenize(tf.constant(lines)).to_list()
    assert [s.decode() for s in detokenize(ids).numpy()] == lines
    assert tokenize(tf.constant([], tf.string)).shape[0] == 0


class _Preprocessor(tf.Module):
    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(self, strings):
        return {"token_ids": self.tokenizer.tokenize(strings).to_tensor()}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def detokenize(self, token_ids):
        return {"text": self.tokenizer.detokenize(token_ids)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def pieces(self, strings):
        return self.tokenizer.id_to_token(self.tokenizer.tokenize(strings))


def test_saved_model_round_trip_carries_the_vocabulary(tokenizer, tmp_path):
    module = _Preprocessor(tokenizer)
    signatures = {"tokenize": module.tokenize, "detokenize": module.detokenize}
    tf.saved_model.save(module, str(tmp_path), signatures=signatures)
    del module

    asset = tmp_path / "assets" / "vocab.txt"
    assert asset.read_text(encoding="utf-8").split("\n")[:-1] == tokenizer.vocabulary

    loaded = tf.saved_model.load(str(tmp_path))
    lines = tf.constant(CORPUS.split("\n")[:20] + ["the \u2603 king"])
    expected_ids = tokenizer.tokenize(lines).to_tensor()
    for tokenize in [loaded.tokenize, loaded.signatures["tokenize"]]:
        ids = tokenize(lines)["token_ids"]
        np.testing.assert_array_equal(ids.numpy(), expected_ids.numpy())
    expected_text = tokenizer.detokenize(expected_ids).numpy()
    for detokenize in [loaded.detokenize, loaded.signatures["detokenize"]]:
        np.testing.assert_array_equal(
            detokenize(token_ids=expected_ids)["text"].numpy(), expected_text
        )

    # The id -> token table is initialized from the SavedModel's own asset.
    pieces = loaded.pieces(tf.constant(["HAMLET. I knows"]))
    assert (
        pieces.to_list()
        == tokenizer.id_to_token(
            tokenizer.tokenize(tf.constant(["HAMLET. I knows"]))
        ).to_list()
    )

    path = loaded.tokenizer.vocabulary_file.asset_path.numpy().decode()
    assert WordPieceTokenizer(path).vocabulary == tokenizer.vocabulary


def test_keras_export_archive_carries_the_vocabulary(tokenizer, tmp_path):
    archive = keras.export.ExportArchive()
    archive.track(tokenizer)
    archive.add_endpoint(
        "tokenize",
        lambda strings: tokenizer.tokenize(strings).to_tensor(),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    archive.write_out(str(tmp_path), verbose=False)
    assert (tmp_path / "assets" / "vocab.txt").exists()
    loaded = tf.saved_model.load(str(tmp_path))
    ids = loaded.tokenize(tf.constant(["HAMLET."]))
    np.testing.assert_array_equal(
        ids.numpy(), tokenizer.tokenize(tf.constant(["HAMLET."])).to_tensor()
    )


def test_vocabulary_file_round_trip(tokenizer, tmp_path):
    path = tokenizer.save_vocabulary(tmp_path / "vocab.txt")
    reread = WordPieceTokenizer(path)
    assert reread.vocabulary == tokenizer.vocabulary
    assert reread.vocab_size == tokenizer.vocab_size == len(tokenizer.vocabulary)
    lines = tf.constant(CORPUS.split("\n")[:10])
    assert reread.tokenize(lines).to_list() == tokenizer.tokenize(lines).to_list()


def test_encode_corpus_equals_tokenize_of_the_joined_text(tokenizer):
    expected = tokenizer.tokenize(tf.constant([CORPUS]))[0].numpy()
    for chunk_lines, chunks_per_batch in [(3, 2), (1024, 64)]:
        ids = encode_corpus(tokenizer, CORPUS, chunk_lines, chunks_per_batch)
        assert ids.dtype == np.int32
        np.testing.assert_array_equal(ids, expected)
    assert (expected == NL_ID).sum() == CORPUS.count("\n")


def test_module_constants_are_plain_ints():
    for value in [text.PAD_ID, text.UNK_ID, text.BOS_ID, text.EOS_ID, text.NL_ID]:
        assert type(value) is int

"""WordPiece tokenization in the TensorFlow graph, for a Switch language model.

Raw strings in, int32 ids out (and back), with ops from TensorFlow core and
tensorflow-text only (`RegexSplitWithOffsets`, `FastWordpieceTokenizeWithOffsets`,
`TFText>FastWordpieceDetokenize`, `StaticRegexReplace`), all of which TF Serving's
stock binary links, so a SavedModel that tokenizes in-graph is servable.

The text keeps its case and punctuation (Shakespeare reads better that way):

- Pre-tokenization (one regex split, the same for learning the vocabulary and
  for tokenizing): whitespace separates words and is dropped; punctuation and
  symbols (Unicode P and S) become one-character words, except the apostrophe
  (' and ’) and the single hyphen, which stay inside words (`th'`, `'tis`,
  `Ship-master`), so elisions and compounds survive exactly; a run of two or
  more hyphens (`--`, the Gutenberg dash) is a word of its own. A newline is a
  word of its own too, spelled `[NL]`.
- WordPiece (`FastWordpieceTokenizer`, suffix indicator `##`) cuts each word
  into vocabulary pieces. Every character of the training text's alphabet is
  in the vocabulary, so only characters outside it are unknown: each becomes
  one `[UNK]` and the rest of its word is kept.

Round trip. `detokenize(tokenize(s))` returns the canonical form of `s`:

- control characters other than "\\n" become spaces, format characters (Cf,
  e.g. a zero-width space or BOM) are removed;
- newlines are kept, one for one (empty lines too); within a line, runs of
  whitespace collapse to one space and leading and trailing whitespace goes;
- no space before `. , ; : ! ? ) ] }`, none after `( [ {`, none on either side
  of a `--` dash; a lone `'` after `. , ; : ! ?` hugs it when a space or the
  line end follows (a closing quote: `'Go,' quoth he`); a pair of `"` on a
  line hugs what it quotes (`"Go," he said`); every other punctuation
  character or symbol stands between single spaces (`a/b` -> `a / b`), and a
  space follows a closing mark before a word (`a,b` -> `a, b`);
- a character outside the vocabulary's alphabet comes back as `[UNK]`, with
  spaces around it; a word over 100 bytes is one `[UNK]`.

Text already in canonical form (the common case for prose and verse) round
trips exactly. `[PAD]`, `[BOS]` and `[EOS]` ids are dropped when detokenizing.
The literal text `[NL]` is not a newline: its brackets split it into three
tokens, so it round trips as written.
"""

import collections
import os
import shutil
import tempfile
import weakref

import numpy as np
import tensorflow as tf

try:
    import tensorflow_text as tf_text
    from tensorflow_text.tools.wordpiece_vocab import (
        wordpiece_tokenizer_learner_lib as wordpiece_learner,
    )
except ImportError as error:  # the layers install without it
    raise ImportError(
        "tf_switch.text (tokenizer, export) needs tensorflow-text: "
        "pip install 'tf-switch[text]'"
    ) from error

RESERVED_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[NL]")
PAD_ID, UNK_ID, BOS_ID, EOS_ID, NL_ID = range(len(RESERVED_TOKENS))
NEWLINE_TOKEN = RESERVED_TOKENS[NL_ID]
SUFFIX_INDICATOR = "##"
MAX_BYTES_PER_WORD = 100

# RE2 patterns. A punctuation mark or symbol that is a word of its own: Unicode
# P except apostrophes and the hyphen, and Unicode S.
_SPLIT_CHARACTER = r"[^\P{P}'’\-]|\p{S}"
_DASH = r"-{2,}"
_SPACES = r"\p{Z}+"  # Control characters were turned into spaces already.
_CONTROL_EXCEPT_NEWLINE = r"[^\P{Cc}\n]"
_FORMAT = r"\p{Cf}"

# Detokenization, applied in this order to FastWordpiece's space-joined words.
_DETOKENIZE_REWRITES = (
    (r"^##", ""),  # A sequence that starts with a suffix piece.
    (r" ?\[NL\] ?", "\n"),
    (r" ([.,;:!?)\]}])", r"\1"),  # Closing marks hug the word before.
    (r"([(\[{]) ", r"\1"),  # Opening marks hug the word after.
    (r"([.,;:!?]) '( |\n|$)", r"\1'\2"),  # A closing single quote: `white.'`
    (r" ?(-{2,}) ?", r"\1"),  # Dashes hug both sides, as in the Gutenberg text.
    (r'" ?([^"\n]*?) ?"', r'"\1"'),  # A pair of quotes hugs what it quotes.
)


def _split_pattern(alphabet=None):
    """The RE2 delimiter and kept-delimiter patterns of the pre-tokenizer.

    With an alphabet, any other character (not a space) is a word of its own,
    so that it alone maps to `[UNK]`, not the whole word around it.
    """
    kept = [r"\n", _DASH, _SPLIT_CHARACTER]
    if alphabet is not None:
        escaped = "".join(f"\\x{{{ord(char):x}}}" for char in sorted(alphabet))
        kept.append(f"[^{escaped}\\p{{Z}}\\n]")
    delimiters = [kept[0], _SPACES] + kept[1:]
    return "|".join(delimiters), "|".join(kept)


def _pretokenize(strings, alphabet=None):
    """Splits `<string>[B]` into words, `<string>[B, (words)]`; "\\n" -> [NL]."""
    strings = tf.strings.regex_replace(strings, _FORMAT, "")
    strings = tf.strings.regex_replace(strings, _CONTROL_EXCEPT_NEWLINE, " ")
    delimiters, kept = _split_pattern(alphabet)
    words = tf_text.regex_split(strings, delimiters, kept)
    return tf.ragged.map_flat_values(
        lambda w: tf.where(tf.equal(w, "\n"), NEWLINE_TOKEN, w), words
    )


def _count_words(texts, lines_per_batch=8192):
    """Counts the pre-tokenizer's words in `texts`, batching lines in-graph."""
    lines = [line for text in texts for line in text.split("\n")]
    split = tf.function(lambda batch: _pretokenize(batch).flat_values)
    counts = collections.Counter()
    for i in range(0, len(lines), lines_per_batch):
        counts.update(split(tf.constant(lines[i : i + lines_per_batch])).numpy())
    return {word.decode("utf-8"): count for word, count in counts.items()}


def build_vocabulary(texts, vocab_size=2000, max_unique_words=10_000):
    """Learns a case-preserving WordPiece vocabulary from `texts`.

    Uses tensorflow-text's vocabulary learner (`wordpiece_tokenizer_learner_lib
    .learn`, the algorithm behind `bert_vocab_from_dataset`), fed with words
    from this module's own pre-tokenizer: `bert_vocab_from_dataset` hard-codes
    BERT's splitting, which cuts `th'` and `Ship-master` apart, and its own
    docstring warns that a vocabulary learned with one splitting is
    "sub-optimal or broken" under another.

    Cost: counting words is linear in the text (about 0.35 s/MB); learning
    is bounded by `max_unique_words`, the most frequent distinct words the
    learner sees, not by the size of the text (10,000 cover 94% of the words
    of ~10 MB of Shakespeare). Measured on 2 CPU cores, vocab_size=2000:
    4-6 s for 5 MB, about 4 s for 9.6 MB. No sampling is needed. Every
    character of the text's alphabet stays in the vocabulary, with and without
    `##`, except `##` forms of punctuation that is always a word of its own.

    Args:
        texts: list of str, documents; newlines are line breaks.
        vocab_size: largest vocabulary size, reserved tokens included; the
            result is usually within 5% under it.
        max_unique_words: cap on the distinct words given to the learner.

    Returns:
        list of str: `RESERVED_TOKENS` first (`[PAD]` is id 0), then single
        characters, then pieces by frequency.
    """
    if isinstance(texts, str):
        raise TypeError(
            "Invalid value received for argument `texts`. Expected a list of "
            "str. Received: a str; wrap it in a list: build_vocabulary([text])."
        )
    minimum = len(RESERVED_TOKENS) + 1
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(
            "Invalid value received for argument `vocab_size`. Expected an int "
            f">= {minimum}. Received: vocab_size={vocab_size!r}"
        )
    word_counts = _learner_input(_count_words(texts), max_unique_words)
    if not word_counts:
        raise ValueError("Received `texts` without a single word to learn from.")
    learn = dict(
        vocab_size=vocab_size,
        reserved_tokens=list(RESERVED_TOKENS),
        max_input_tokens=-1,  # `_learner_input` applied the cap.
        joiner=SUFFIX_INDICATOR,
    )
    # The learner binary-searches a count threshold from the largest count
    # down; starting at the count of the (vocab_size / 4)-th most frequent
    # word saves about half of its passes. Too low a start shows as a
    # vocabulary over budget; then search the full range.
    start = word_counts[min(vocab_size // 4, len(word_counts) - 1)][1]
    vocabulary = wordpiece_learner.learn(word_counts, upper_thresh=start, **learn)
    if len(vocabulary) > vocab_size:
        vocabulary = wordpiece_learner.learn(word_counts, **learn)
    vocabulary = _drop_unused_suffixes(vocabulary)
    if len(vocabulary) > vocab_size:
        raise ValueError(
            f"The text has too many distinct characters for vocab_size="
            f"{vocab_size}: the smallest vocabulary that spells every character "
            f"has {len(vocabulary)} tokens. Raise `vocab_size`."
        )
    return vocabulary


def _learner_input(word_counts, max_unique_words):
    """The `max_unique_words` most frequent words, plus the rest's alphabet.

    The learner spells out only characters of the words it sees; a character
    that occurs in rarer words only (a digit in "SCENE 7") joins as a word of
    its own, counted as often as it occurs, so it is in the vocabulary.
    """
    word_counts = {w: c for w, c in word_counts.items() if w not in RESERVED_TOKENS}
    words = sorted(word_counts.items(), key=lambda item: (-item[1], item[0]))
    kept, rest = words[:max_unique_words], words[max_unique_words:]
    alphabet = set().union(*(set(word) for word, _ in kept))
    rare_characters = collections.Counter()
    for word, count in rest:
        for char in word:
            if char not in alphabet:
                rare_characters[char] += count
    kept += sorted(rare_characters.items(), key=lambda item: (-item[1], item[0]))
    return kept


def _drop_unused_suffixes(vocabulary):
    """Drops `##c` for characters the pre-tokenizer always splits off."""
    prefix = SUFFIX_INDICATOR
    candidates = [t[len(prefix) :] for t in vocabulary if t.startswith(prefix)]
    candidates = [c for c in candidates if len(c) == 1]
    if not candidates:
        return vocabulary
    # The same RE2 pattern as the pre-tokenizer, so the two always agree.
    split = tf.strings.regex_full_match(candidates, _SPLIT_CHARACTER).numpy()
    unused = {
        prefix + c for c, is_split in zip(candidates, split, strict=True) if is_split
    }
    return [t for t in vocabulary if t not in unused]


def _read_vocabulary(path):
    with tf.io.gfile.GFile(os.fspath(path), "r") as f:
        tokens = f.read().split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    return tokens


def _check_vocabulary(vocabulary):
    head = tuple(vocabulary[: len(RESERVED_TOKENS)])
    if head != RESERVED_TOKENS:
        raise ValueError(
            "Invalid vocabulary: it must start with the reserved tokens "
            f"{list(RESERVED_TOKENS)} (their ids are module constants). "
            f"Received: {list(head)}. Build it with `build_vocabulary`."
        )
    bad = [t for t in vocabulary if not t or "\n" in t or t != t.strip()]
    if bad or len(set(vocabulary)) != len(vocabulary):
        raise ValueError(
            "Invalid vocabulary: tokens must be unique, non-empty and free of "
            f"newlines and surrounding spaces. Received bad tokens: {bad[:5]}"
        )


class WordPieceTokenizer(tf.Module):
    """Tokenizes raw strings to WordPiece ids in-graph, and back.

    A `tf.Module`, not a Keras layer: it holds no weights, takes strings and
    returns ragged ids, and what an export needs is that its functions trace
    and its vocabulary file travels as an asset. Hold it as an attribute of
    the exported module (or pass it to `keras.export.ExportArchive.track`) and
    call it inside the exported `tf.function`s. The WordPiece model is a
    constant of those functions; `vocabulary_file` is the same vocabulary as
    `assets/vocab.txt` of the SavedModel, for clients and for rebuilding the
    tokenizer: `WordPieceTokenizer(loaded.tokenizer.vocabulary_file.asset_path
    .numpy().decode())`.

    See the module docstring for the splitting rules and the exact text
    normalization of a round trip.

    Args:
        vocabulary: list of str from `build_vocabulary`, or the path of a
            vocab.txt (one token per line), `RESERVED_TOKENS` first.
        name: module name.

    Example:

    >>> text = "To be, or not to be:\\nthat is the question."
    >>> tokenizer = WordPieceTokenizer(build_vocabulary([text] * 10, 100))
    >>> ids = tokenizer.tokenize(tf.constant([text, "  To  be?"]))
    >>> ids.shape
    TensorShape([2, None])
    >>> [s.decode() for s in tokenizer.detokenize(ids).numpy()]
    ['To be, or not to be:\\nthat is the question.', 'To be [UNK]']

    References:
        Song et al., "Fast WordPiece Tokenization", EMNLP 2021 (the linear-time
        algorithm of `FastWordpieceTokenizer`); Wu et al., "Google's Neural
        Machine Translation System", arXiv 1609.08144 (WordPiece).
    """

    def __init__(self, vocabulary, name=None):
        super().__init__(name=name)
        if isinstance(vocabulary, (str, os.PathLike)):
            vocabulary = _read_vocabulary(vocabulary)
        vocabulary = [str(token) for token in vocabulary]
        _check_vocabulary(vocabulary)
        self._vocabulary = tuple(vocabulary)
        self._alphabet = frozenset(
            t for t in vocabulary[len(RESERVED_TOKENS) :] if len(t) == 1
        )
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            vocab=vocabulary,
            suffix_indicator=SUFFIX_INDICATOR,
            max_bytes_per_word=MAX_BYTES_PER_WORD,
            token_out_type=tf.int32,
            unknown_token=RESERVED_TOKENS[UNK_ID],
            no_pretokenization=True,
            support_detokenization=True,
        )
        # The asset needs a file that outlives the caller's: a private copy.
        directory = tempfile.mkdtemp(prefix="tf_switch_vocab_")
        weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
        path = os.path.join(directory, "vocab.txt")
        self.save_vocabulary(path)
        self.vocabulary_file = tf.saved_model.Asset(path)
        # A table initialized from the asset makes it a resource the graph
        # uses: `keras.export.ExportArchive.track` keeps a tracked object's
        # resources (and their assets) but drops a bare `Asset`.
        self._id_to_token = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                self.vocabulary_file,
                key_dtype=tf.int64,
                key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                value_dtype=tf.string,
                value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value=RESERVED_TOKENS[UNK_ID],
        )

    @property
    def vocab_size(self):
        """Number of tokens, reserved ones included (a Python int)."""
        return len(self._vocabulary)

    @property
    def vocabulary(self):
        """The tokens, by id (a list of str)."""
        return list(self._vocabulary)

    def save_vocabulary(self, path):
        """Writes the vocabulary to `path`, one token per line; returns `path`."""
        path = os.fspath(path)
        with tf.io.gfile.GFile(path, "w") as f:
            f.write("".join(token + "\n" for token in self._vocabulary))
        return path

    def id_to_token(self, token_ids):
        """The vocabulary entry of each id, e.g. `##ing`; `[UNK]` if out of range.

        Args:
            token_ids: integer ids, a `Tensor` or `RaggedTensor` of any shape.

        Returns:
            Strings of the same shape (and raggedness).
        """
        return tf.ragged.map_flat_values(
            lambda ids: self._id_to_token.lookup(tf.cast(ids, tf.int64)), token_ids
        )

    def tokenize(self, strings):
        """Tokenizes a batch of strings.

        Args:
            strings: `<string>[B]`, UTF-8 (a list of str works eagerly).

        Returns:
            `<int32>[B, (tokens)]` ragged ids; a newline is `NL_ID`, no `BOS_ID`
            or `EOS_ID` is added.
        """
        strings = tf.convert_to_tensor(strings, tf.string)
        if strings.shape.rank != 1:
            raise ValueError(
                "Invalid value received for argument `strings`. Expected a 1-D "
                f"string tensor [batch]. Received shape: {strings.shape}"
            )
        words = _pretokenize(strings, self._alphabet)  # [B, (words)]
        pieces = self._wordpiece.tokenize(words)  # [B, (words), (pieces)]
        return pieces.merge_dims(1, 2)

    def detokenize(self, token_ids):
        """Turns ids back into text (see the module docstring for the rules).

        Args:
            token_ids: `<int32|int64>[B, (T)]` ragged, or `[B, T]` dense padded
                with `PAD_ID`. `PAD_ID`, `BOS_ID` and `EOS_ID` anywhere are
                dropped; `NL_ID` becomes "\\n".

        Returns:
            `<string>[B]`.

        Raises:
            InvalidArgumentError: an id is negative or >= `vocab_size`.
        """
        if not isinstance(token_ids, tf.RaggedTensor):
            token_ids = tf.convert_to_tensor(token_ids)
        if token_ids.shape.rank != 2:
            raise ValueError(
                "Invalid value received for argument `token_ids`. Expected ids "
                f"of rank 2, [batch, (tokens)]. Received shape: {token_ids.shape}"
            )
        if not token_ids.dtype.is_integer:
            raise ValueError(
                "Invalid value received for argument `token_ids`. Expected an "
                f"integer dtype. Received: dtype={token_ids.dtype.name}"
            )
        if not isinstance(token_ids, tf.RaggedTensor):
            token_ids = tf.RaggedTensor.from_tensor(token_ids)
        token_ids = tf.cast(token_ids, tf.int32)
        flat = token_ids.flat_values
        message = f"token ids must be in [0, vocab_size={self.vocab_size})"
        checks = [
            tf.debugging.assert_non_negative(flat, message=message),
            tf.debugging.assert_less(flat, self.vocab_size, message=message),
        ]
        with tf.control_dependencies(checks):
            token_ids = token_ids.with_flat_values(tf.identity(flat))
        keep = tf.ragged.map_flat_values(
            lambda ids: (ids != PAD_ID) & (ids != BOS_ID) & (ids != EOS_ID),
            token_ids,
        )
        token_ids = tf.ragged.boolean_mask(token_ids, keep)
        text = self._wordpiece.detokenize(token_ids)  # [B]
        for pattern, rewrite in _DETOKENIZE_REWRITES:
            text = tf.strings.regex_replace(text, pattern, rewrite)
        return text


def encode_corpus(tokenizer, text, chunk_lines=1024, chunks_per_batch=64):
    """Tokenizes a large text into one flat id stream, for `tf.data`.

    Lines go through `tokenizer.tokenize` in batches of strings of
    `chunk_lines` lines each. No token spans a newline, so the result equals
    `tokenizer.tokenize([text])[0]`: newlines are `NL_ID`, and nothing else is
    added (no `BOS_ID` / `EOS_ID`).

    Args:
        tokenizer: a `WordPieceTokenizer`.
        text: str.
        chunk_lines: lines per string handed to the tokenizer.
        chunks_per_batch: strings per `tokenize` call.

    Returns:
        `np.ndarray` of int32, shape `[num_tokens]`.
    """
    if chunk_lines < 1 or chunks_per_batch < 1:
        raise ValueError(
            "Invalid value received for `chunk_lines` or `chunks_per_batch`. "
            f"Expected positive ints. Received: chunk_lines={chunk_lines}, "
            f"chunks_per_batch={chunks_per_batch}"
        )
    lines = text.split("\n")
    chunks = [
        "\n".join(lines[i : i + chunk_lines])
        + ("\n" if i + chunk_lines < len(lines) else "")
        for i in range(0, len(lines), chunk_lines)
    ]
    tokenize = tf.function(
        tokenizer.tokenize,
        input_signature=[tf.TensorSpec([None], tf.string)],
        reduce_retracing=True,
    )
    parts = [
        tokenize(tf.constant(chunks[i : i + chunks_per_batch])).flat_values.numpy()
        for i in range(0, len(chunks), chunks_per_batch)
    ]
    return np.concatenate(parts).astype(np.int32, copy=False)

"""A tiny synthetic grammar, so training tests need no network and no
borrowed text."""

import random

SUBJECTS = ["the king", "a fool", "my lord", "the queen", "this knight", "our friend"]
VERBS = ["loves", "fears", "follows", "praises", "forgets", "answers"]
OBJECTS = ["the crown", "his sword", "her letter", "the night", "that ghost", "a rose"]
ENDINGS = [".", "!", "?", ", and sleeps."]


def synthetic_text(num_lines, seed=0):
    """`num_lines` lines of subject-verb-object sentences, some speaker tags."""
    rng = random.Random(seed)
    lines = []
    for index in range(num_lines):
        if index % 7 == 0:
            lines.append(rng.choice(["KING:", "FOOL:", "QUEEN:"]))
        sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        lines.append(sentence.capitalize() + rng.choice(ENDINGS))
    return "\n".join(lines) + "\n"


def write_corpus(folder, num_files=4, lines_per_file=300):
    """A folder of .txt files (split by file into train and validation)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(num_files):
        (folder / f"part_{index}.txt").write_text(
            synthetic_text(lines_per_file, seed=index)
        )
    return folder

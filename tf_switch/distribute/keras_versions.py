"""Version guards for the places where tf_switch patches Keras internals."""

import keras


def keras_in(version_range):
    """Whether the installed Keras is in `((low major, minor), (high major,
    minor))`, low inclusive, high exclusive."""
    low, high = version_range
    version = tuple(int(part) for part in keras.version().split(".")[:2])
    return low <= version < high

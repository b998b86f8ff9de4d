"""Whether the code being traced will be compiled by XLA.

Dropless routing and the sorted dispatch have data-dependent shapes, which XLA
cannot compile; the Switch layer asks here so that it can refuse with a
message that says what to do, instead of failing deep inside the compiler.

TensorFlow has no public API for this. `tf.function(jit_compile=True)` and
`TPUStrategy` both trace inside an `XLAControlFlowContext`, which
`control_flow_util.GraphOrParentsInXlaContext` (TensorFlow's own check, used
by its control flow ops) finds; checked on TensorFlow 2.20. Should that
module move, the check reports False and XLA's own error surfaces instead.
"""

import tensorflow as tf

try:  # TensorFlow internals, see the module docstring.
    from tensorflow.python.ops import control_flow_util as _control_flow_util
except ImportError:  # pragma: no cover - a TensorFlow that moved it
    _control_flow_util = None


def in_xla_context():
    """True while tracing for XLA: `jit_compile=True` or a TPU replica."""
    if tf.executing_eagerly():
        return False
    if isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy):
        return True
    if _control_flow_util is None:
        return False
    graph = tf.compat.v1.get_default_graph()
    return bool(_control_flow_util.GraphOrParentsInXlaContext(graph))

"""Training across devices and machines with `tf.distribute`.

- `resolve_strategy(name)`: a TPU, several GPUs, several machines or one
  device, chosen by name or automatically, the choice logged.
- `split_cpu(n)`: n logical CPU devices, to run data or expert parallelism on
  one machine.
- `is_chief(strategy)`: whether this process writes checkpoints and exports.
- `keras_multi_worker_fix`: makes Keras 3 `fit` work under
  MultiWorkerMirroredStrategy (keras-team/keras#20585); `resolve_strategy`
  applies it.
- `expert_parallel`, `expert_shards`: experts sharded over the replicas
  (`SwitchFFN(..., expert_parallel=True)`); `logical_weights(model)` and
  `set_logical_weights(model, weights)` read and write such a model's weights
  with every expert array whole (`[N, ...]`), as a replicated model has them.
"""

from tf_switch.distribute.expert_parallel import logical_weights, set_logical_weights
from tf_switch.distribute.strategy import (
    STRATEGIES,
    StrategyUnavailableError,
    is_chief,
    resolve_strategy,
    split_cpu,
)

__all__ = [
    "STRATEGIES",
    "StrategyUnavailableError",
    "is_chief",
    "logical_weights",
    "resolve_strategy",
    "set_logical_weights",
    "split_cpu",
]

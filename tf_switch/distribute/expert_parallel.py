"""Expert parallelism: each of D replicas holds N/D experts, and tokens travel
to their expert's replica and back by all-to-all.

    strategy = tf.distribute.MirroredStrategy()  # D replicas
    with strategy.scope():
        inputs = keras.Input((length, hidden))
        ffn = SwitchFFN(num_experts=8, intermediate_dim=64, expert_parallel=True)
        model = keras.Model(inputs, keras.layers.Dense(hidden)(ffn(inputs)))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(dataset)  # equal per-replica batches: drop_remainder=True

With replicated experts every device holds all N experts' weights and
optimizer state, so N is bounded by one device's memory. Under a
`tf.distribute.MirroredStrategy` (or `TPUStrategy`) with D replicas,
`ExpertParallelFFN` (what `SwitchFFN(..., expert_parallel=True)` builds as
its experts) stores each expert weight as a mirrored
variable of shard shape `[N/D, ...]` whose D components hold *different*
experts: replica r holds experts `r*N/D ... (r+1)*N/D - 1`. The dense
weights (router, attention, embeddings) stay data-parallel. One layer call on
replica r (M = slots per expert on each replica):

    expert-major dispatch buffer          [N, M, d]
    -> [D, N/D, M, d], all-to-all         [D (source replica), N/D, M, d]
    -> local experts on                   [N/D, D*M, d]
    -> all-to-all back                    [D (expert's replica), N/D, M, d]
    -> [N, M, d]

The all-to-all is `CollectiveAllToAllV3` under a MirroredStrategy (one
communicator per layer and replica, created once at build; every op carries
`timeout_seconds`, `DEFAULT_TIMEOUT_SECONDS`, so a replica that never arrives
fails the step instead of hanging it), with a custom gradient: the backward
pass of an all-to-all is the same all-to-all of the incoming gradient. Under
a `TPUStrategy` it is `tf.raw_ops.AllToAll` (the XLA collective Mesh
TensorFlow used), whose gradient TensorFlow registers.

Training with a stock Keras optimizer: Keras divides each replica's loss by D
and sums every gradient over the replicas. An expert shard's gradient is
already complete on its replica, because the backward all-to-all brings back
every replica's tokens' contributions (each already divided by D), so it must
not be summed: `tf_switch.distribute.expert_shards` hooks Keras' TensorFlow
optimizer to skip that sum for expert shards, and creates their optimizer
slots (Adam's moments) with the shard shape, 1/D of the memory. Keras saving
stores the full `[N, ...]` weights and slots, so expert-parallel and
replicated models load each other's files.

Requirements and limits:

- Static capacity only: dropless routing (`capacity_factor=None` or
  `eval_capacity_factor=None`) and `dispatch="sorted"` give each expert a
  variable number of tokens, which this equal-size all-to-all cannot move, so
  `SwitchOptions` refuses them with `expert_parallel=True` (a message says
  what to set). A variable-size exchange would first all-to-all the
  per-expert counts, then the rows; not built.
- N divisible by D. Outside a strategy, or with one replica, the option gives
  the plain layer (identical results); other multi-replica strategies
  (MultiWorkerMirroredStrategy, CentralStorageStrategy, ...) are refused.
- Every replica must receive as many tokens as the others in each step (the
  all-to-all moves equal-shaped buffers): a global batch divisible by D and
  `drop_remainder=True`, for `evaluate` and `predict` too. Otherwise the step
  fails with "Shape mismatch in the collective instance".
- `model.get_weights()` / `set_weights()` see replica 0's `[N/D, ...]` shards:
  use `logical_weights` / `set_logical_weights`. A raw `tf.train.Checkpoint`
  would save replica 0's shard only; Keras' `save`, `save_weights`,
  `ModelCheckpoint` and `BackupAndRestore` save everything.
- Keras clips gradients (`clipnorm`, `global_clipnorm`) per replica before the
  sum, where expert gradients are complete and dense ones partial, so
  clipping differs from the replicated run. Optimizer EMA and gradient
  accumulation were not checked.

References: Lepikhin et al., "GShard", arXiv 2006.16668 (experts sharded over
devices, all-to-all dispatch); Fedus et al., "Switch Transformers", arXiv
2101.03961, §5.
"""

import collections
import itertools

import keras
import tensorflow as tf

from tf_switch.distribute import expert_shards
from tf_switch.distribute.expert_shards import (
    is_expert_shard,
    logical_weights,
    set_logical_weights,
)
from tf_switch.keras_internals import tf_variable
from tf_switch.layers.expert_ffn import ExpertFFN

__all__ = [
    "ExpertExchange",
    "ExpertParallelFFN",
    "is_expert_shard",
    "logical_weights",
    "num_expert_shards",
    "per_device_bytes",
    "set_logical_weights",
]

# Seconds a collective waits for the other replicas before it fails the step.
DEFAULT_TIMEOUT_SECONDS = 120

# Collective group keys for the communicators. MirroredStrategy numbers its
# own collectives from 1 up, so start far above them. Every layer instance
# gets its own key: collectives of one communicator must run in the same
# order on every replica, which one layer's data dependencies guarantee.
_group_keys = itertools.count(0x5E1000)


def _is_tpu_strategy(strategy):
    return isinstance(strategy, tf.distribute.TPUStrategy)


def num_expert_shards(num_experts, strategy=None):
    """D, the number of replicas that share the experts, or 1.

    1 (experts replicated, the plain path) outside a strategy or under one
    with a single replica.

    Args:
        num_experts: N; must be divisible by D.
        strategy: default `tf.distribute.get_strategy()`.

    Returns:
        A Python int.
    """
    strategy = strategy or tf.distribute.get_strategy()
    num_replicas = strategy.num_replicas_in_sync
    if num_replicas == 1:
        return 1
    is_mirrored = isinstance(strategy, tf.distribute.MirroredStrategy)
    if not (is_mirrored or _is_tpu_strategy(strategy)):
        raise ValueError(
            "expert_parallel=True supports tf.distribute.MirroredStrategy "
            "(CPU/GPU, one machine) and TPUStrategy. Received: strategy="
            f"{type(strategy).__name__}. Use expert_parallel=False."
        )
    if num_experts % num_replicas:
        raise ValueError(
            "Invalid value received for argument `num_experts`. Expected a "
            f"multiple of the number of replicas ({num_replicas}) with "
            f"expert_parallel=True, so that each replica holds the same number "
            f"of experts. Received: num_experts={num_experts}"
        )
    return num_replicas


def per_device_bytes(variables):
    """The bytes that `variables` hold on each device, measured per component.

    A mirrored variable counts once per replica device; an expert-sharded one
    counts its shard on each. Pass a model's or an optimizer's `variables`.

    Returns:
        `{device name: bytes}`.
    """
    totals = collections.Counter()
    for variable in variables:
        variable = tf_variable(variable)
        components = (
            variable.values
            if isinstance(variable, tf.distribute.DistributedValues)
            else (variable,)
        )
        for component in components:
            size = component.shape.num_elements() * component.dtype.size
            totals[component.device] += size
    return dict(totals)


def _all_to_all_v3(communicator, inputs, timeout_seconds):
    """`CollectiveAllToAllV3` whose backward pass is the same all-to-all."""

    def exchange(tensor):
        return tf.raw_ops.CollectiveAllToAllV3(
            input=tensor,
            communicator=communicator,
            group_assignment=tf.constant([], tf.int32),
            timeout_seconds=timeout_seconds,
        )

    @tf.custom_gradient
    def all_to_all(tensor):
        return exchange(tensor), exchange

    return all_to_all(inputs)


class ExpertExchange:
    """Moves expert-major token buffers to their experts' replicas and back.

    Created in a layer's `build` under the strategy (cross-replica context);
    used in its `call` inside `strategy.run` (the replica context that
    `model.fit`, `evaluate` and `predict` use).

    Args:
        num_experts: N.
        strategy: the `MirroredStrategy` or `TPUStrategy` with D > 1
            replicas.
        timeout_seconds: per collective op (CPU/GPU): a replica that never
            arrives raises `DeadlineExceededError` instead of hanging.
            Default `DEFAULT_TIMEOUT_SECONDS`.
    """

    def __init__(self, num_experts, strategy, timeout_seconds=None):
        if not tf.distribute.in_cross_replica_context():
            raise RuntimeError(
                "An expert-parallel layer must be built under `strategy.scope()`, "
                "not inside `strategy.run`: build the model (call it on a batch, "
                "or `model.build(...)`) before training. `model.fit` does this."
            )
        self.num_shards = num_expert_shards(num_experts, strategy)
        self.num_experts = num_experts
        self.strategy = strategy
        self.timeout_seconds = timeout_seconds or DEFAULT_TIMEOUT_SECONDS
        self.communicators = None
        if not _is_tpu_strategy(strategy):
            self.communicators = self._initialize_communicators()

    def _initialize_communicators(self):
        """One communicator per replica device, all initialized together.

        Initialization blocks until every rank has joined, so the D ops run in
        one function; a group key can be initialized only once per process.
        """
        group_key = next(_group_keys)
        devices = self.strategy.extended.worker_devices

        @tf.function
        def initialize():
            handles = []
            for rank, device in enumerate(devices):
                with tf.device(device):
                    handles.append(
                        tf.raw_ops.CollectiveInitializeCommunicator(
                            group_key=group_key,
                            rank=rank,
                            group_size=len(devices),
                            timeout_seconds=self.timeout_seconds,
                        )
                    )
            return handles

        with tf.init_scope():
            return initialize()

    def in_replica_context(self):
        """Whether the caller runs inside `strategy.run` of this strategy."""
        return (
            tf.distribute.has_strategy()
            and tf.distribute.get_strategy() is self.strategy
            and not tf.distribute.in_cross_replica_context()
        )

    def _all_to_all(self, tensor):
        """Sends `tensor[s]` to replica s; `[D, ...]` -> `[D, ...]`."""
        if self.communicators is None:  # TPUStrategy; gradient registered.
            return tf.raw_ops.AllToAll(
                input=tensor,
                group_assignment=[list(range(self.num_shards))],
                concat_dimension=0,
                split_dimension=0,
                split_count=self.num_shards,
            )
        replica_id = tf.get_static_value(
            tf.distribute.get_replica_context().replica_id_in_sync_group
        )
        if replica_id is None:
            raise RuntimeError(
                "Expert parallelism needs the replica id as a constant when the "
                "step is traced, as MirroredStrategy gives it; this strategy "
                f"({type(self.strategy).__name__}) does not."
            )
        return _all_to_all_v3(
            self.communicators[replica_id], tensor, self.timeout_seconds
        )

    def to_experts(self, expert_inputs):
        """`[N, M, d]` (this replica's tokens) -> `[N/D, D*M, d]` (its experts')."""
        shards, local = self.num_shards, self.num_experts // self.num_shards
        _, slots, hidden = expert_inputs.shape
        slots = slots if slots is not None else tf.shape(expert_inputs)[1]
        blocks = tf.reshape(expert_inputs, [shards, local, slots, hidden])
        received = self._all_to_all(blocks)  # [D (source), N/D, M, d]
        received = tf.transpose(received, [1, 0, 2, 3])  # [N/D, D, M, d]
        return tf.reshape(received, [local, shards * slots, hidden])

    def from_experts(self, expert_outputs):
        """`[N/D, D*M, d]` -> `[N, M, d]`: outputs back to their tokens."""
        shards, local = self.num_shards, self.num_experts // self.num_shards
        hidden = expert_outputs.shape[2]
        blocks = tf.reshape(expert_outputs, [local, shards, -1, hidden])
        blocks = tf.transpose(blocks, [1, 0, 2, 3])  # [D (destination), N/D, M, d]
        returned = self._all_to_all(blocks)  # [D (expert's replica), N/D, M, d]
        return tf.reshape(returned, [self.num_experts, -1, hidden])


@keras.saving.register_keras_serializable(package="tf_switch")
class ExpertParallelFFN(ExpertFFN):
    """`ExpertFFN` whose experts are sharded over the replicas of a strategy.

    Built under a `MirroredStrategy` or `TPUStrategy` with D > 1 replicas,
    each replica holds N/D experts' weights (and optimizer slots), and tokens
    travel to their expert's replica and back by all-to-all (module
    docstring). N must be divisible by D. Outside a strategy, or with one
    replica, it is the plain `ExpertFFN`. Saving writes whole `[N, ...]`
    experts, so it and a plain `ExpertFFN` load each other's weights.
    Building it installs the optimizer hooks of
    `tf_switch.distribute.expert_shards`.

    Takes the arguments of `ExpertFFN`.

    Example:

    >>> experts = ExpertParallelFFN(num_experts=4, intermediate_dim=32)
    >>> experts(keras.ops.ones((4, 10, 16))).shape  # no strategy: plain
    TensorShape([4, 10, 16])
    """

    def build(self, input_shape):
        self.num_shards = num_expert_shards(self.num_experts)
        # The all-to-all between replicas; None when the experts are whole.
        self.exchange = None
        if self.num_shards > 1:
            self.exchange = ExpertExchange(
                self.num_experts, tf.distribute.get_strategy()
            )
        super().build(input_shape)

    def add_expert_weight(self, name, shape, initializer):
        if self.num_shards == 1:
            return super().add_expert_weight(name, shape, initializer)
        return expert_shards.add_expert_weight(
            self, name, shape, initializer, self.num_shards
        )

    def _whole(self, variable):
        """All N experts of a sharded variable, for a cross-replica call."""
        if variable is None:
            return None
        whole = expert_shards.full_expert_weight(variable)
        return keras.ops.cast(whole, self.compute_dtype)

    def call(self, inputs, training=None):
        if self.exchange is None:
            return super().call(inputs, training=training)
        if not self.exchange.in_replica_context():
            # E.g. `model(x)` under `strategy.scope()`: every expert here.
            return self.apply_experts(
                inputs,
                [self._whole(w) for w in self.wi],
                self._whole(self.wo),
                self._whole(self.bi),
                self._whole(self.bo),
                training,
            )
        local_inputs = self.exchange.to_experts(inputs)  # [N/D, D*M, d]
        local_outputs = self.apply_experts(
            local_inputs, self.wi, self.wo, self.bi, self.bo, training
        )
        return self.exchange.from_experts(local_outputs)  # [N, M, d]

    def _variables_by_key(self):
        variables = {}
        super().save_own_variables(variables)  # Keras stores the variables
        return variables

    def save_own_variables(self, store):
        # Full [N, ...] experts, whatever the sharding: an expert-parallel
        # and a replicated layer load each other's weights.
        expert_shards.save_full_values(
            super().save_own_variables, self._variables_by_key(), store
        )

    def load_own_variables(self, store):
        expert_shards.load_full_values(
            super().load_own_variables, self._variables_by_key(), store
        )

"""Expert-sharded variables: creation, full-value save and load, optimizer hooks.

An expert-sharded variable is a mirrored variable of shape `[N/D, ...]` whose
D per-replica components hold different experts (component r: experts
`r*N/D ... (r+1)*N/D - 1`); see `tf_switch.distribute.expert_parallel`.
Everything that reads or writes a whole variable (saving, loading,
`logical_weights`) goes through the full `[N, ...]` value, so expert-parallel
and replicated models exchange weights freely.

Keras' TensorFlow optimizer (the base of every Keras optimizer on this
backend) needs hooks for such variables (`install_optimizer_hooks`, called
when the first one is created; they go through
`tf_switch.keras_internals.hook_tf_optimizer`, which holds the private names
and the Keras version range); each leaves every other variable alone:

- gradient all-reduce: Keras sums every gradient over the replicas.
  An expert shard's gradient is already complete on its replica (the
  backward all-to-all brings every replica's contribution), so it skips the
  sum; `strategy.extended.update` then hands each component its own
  replica's gradient (a `PerReplica` value), and the optimizer's slots,
  created by `add_variable_from_reference` with the shard shape, are updated
  per component too.
- `add_variable_from_reference`: marks a slot of an expert shard as one.
- `save_own_variables` / `load_own_variables`: save the slots' full values.
"""

import functools

import keras
import numpy as np
import tensorflow as tf

from tf_switch.keras_internals import hook_tf_optimizer, tf_variable

SHARD_ATTRIBUTE = "_tf_switch_expert_shard"


def is_expert_shard(variable):
    """Whether a Keras or tf variable holds per-replica expert shards."""
    return getattr(tf_variable(variable), SHARD_ATTRIBUTE, False)


def _components(variable):
    return tf_variable(variable).values


def add_expert_weight(layer, name, shape, initializer, num_shards):
    """Adds a `[N, ...]` expert weight to `layer`, sharded over the replicas.

    Creates a mirrored variable of shape `[N/D, ...]` under the current
    strategy and gives component r experts `r*N/D ... (r+1)*N/D - 1` of
    `initializer([N, ...])`, i.e. the replicated layer's initial value split
    by expert. The full value is drawn once, on the host CPU.

    Args:
        layer: the `keras.layers.Layer` that owns the weight.
        name: the weight's name.
        shape: the full shape `[N, ...]`.
        initializer: a Keras initializer, called once on the full shape.
        num_shards: D, the number of replicas; divides N.

    Returns:
        The `keras.Variable`, of shape `[N/D, ...]`.
    """
    install_optimizer_hooks()
    variable = layer.add_weight(
        name=name, shape=(shape[0] // num_shards, *shape[1:]), initializer="zeros"
    )
    with tf.init_scope(), tf.device("/cpu:0"):
        full = keras.initializers.get(initializer)(shape, dtype=variable.dtype)
    assign_expert_weight(variable, full)
    setattr(tf_variable(variable), SHARD_ATTRIBUTE, True)
    return variable


def gather_expert_weight(variable):
    """The full `[N, ...]` numpy value of an expert-sharded variable."""
    return np.concatenate([v.numpy() for v in _components(variable)])


def assign_expert_weight(variable, full_value):
    """Assigns a full `[N, ...]` value to an expert-sharded variable."""
    components = _components(variable)
    shards = np.split(np.asarray(full_value), len(components))
    with tf.init_scope():
        for component, shard in zip(components, shards, strict=True):
            with tf.device(component.device):
                component.assign(tf.cast(shard, component.dtype))


def full_expert_weight(variable):
    """The full `[N, ...]` tensor of an expert-sharded variable.

    For calls outside the strategy's replica context (e.g. `model(x)` under
    `strategy.scope()`): the components are concatenated on the current
    device; gradients flow back to each.
    """
    return tf.concat([tf.convert_to_tensor(v) for v in _components(variable)], 0)


def logical_weights(model):
    """`model.get_weights()` with every expert shard gathered to `[N, ...]`.

    Equal to `model.get_weights()` for a model without expert shards. Feed it
    to `set_weights` of a replicated copy of the model (e.g. for serving).
    """
    return [
        gather_expert_weight(v) if is_expert_shard(v) else v.numpy()
        for v in model.weights
    ]


def enumerate_keys(variables):
    """`(str(i), variable)` pairs: the keys Keras saves `variables` under."""
    return ((str(index), variable) for index, variable in enumerate(variables))


def save_full_values(save, variables_by_key, store):
    """Runs `save(staged)`, then writes `staged` to `store`, shards gathered.

    Args:
        save: a Keras `save_own_variables` bound to its object, writing to a
            dict.
        variables_by_key: the store key of each of the object's variables.
        store: the Keras weights store.
    """
    staged = {}
    save(staged)
    for key, value in staged.items():
        variable = variables_by_key.get(key)
        if variable is not None and is_expert_shard(variable):
            value = gather_expert_weight(variable)
        store[key] = value


def load_full_values(load, variables_by_key, store):
    """Runs `load` on `store`, giving each expert shard its own experts.

    The store holds full `[N, ...]` values (from an expert-parallel or a
    replicated model). Keras' `load_own_variables` assigns every variable
    as a whole, so it gets a shard-shaped stand-in for each shard, whose
    components are then assigned their own experts.

    Args:
        load: a Keras `load_own_variables` bound to its object.
        variables_by_key: the store key of each of the object's variables.
        store: the Keras weights store.
    """
    shards = {k: v for k, v in variables_by_key.items() if is_expert_shard(v)}
    keys = list(store.keys())
    if not shards or not set(shards) <= set(keys):
        return load(store)  # Keras reports a mismatch, if any.
    staged = {key: store[key] for key in keys}
    for key, variable in shards.items():
        staged[key] = np.zeros(variable.shape, variable.dtype)
    load(staged)
    for key, variable in shards.items():
        assign_expert_weight(variable, store[key])


def set_logical_weights(model, weights):
    """`model.set_weights(weights)` for full `[N, ...]` expert weights.

    The inverse of `logical_weights`: each expert shard gets its own experts.
    """
    for variable, value in zip(model.weights, weights, strict=True):
        if is_expert_shard(variable):
            assign_expert_weight(variable, value)
        else:
            variable.assign(value)


def _skip_all_reduce_for_shards(original):
    @functools.wraps(original)
    def all_reduce_gradients(self, grads_and_vars):
        grads_and_vars = list(grads_and_vars)
        is_shard = [is_expert_shard(v) for _, v in grads_and_vars]
        if not any(is_shard):
            return original(self, grads_and_vars)
        pairs = list(zip(grads_and_vars, is_shard, strict=True))
        dense = [pair for pair, shard in pairs if not shard]
        reduced = iter(original(self, dense) if dense else [])
        return [pair if shard else next(reduced) for pair, shard in pairs]

    return all_reduce_gradients


def _mark_slots_of_shards(original):
    @functools.wraps(original)
    def add_variable_from_reference(self, reference_variable, *args, **kwargs):
        variable = original(self, reference_variable, *args, **kwargs)
        if is_expert_shard(reference_variable):
            setattr(tf_variable(variable), SHARD_ATTRIBUTE, True)
        return variable

    return add_variable_from_reference


def _save_full_slots(original):
    @functools.wraps(original)
    def save_own_variables(self, store):
        save_full_values(
            lambda staged: original(self, staged),
            dict(enumerate_keys(self.variables)),
            store,
        )

    return save_own_variables


def _load_full_slots(original):
    @functools.wraps(original)
    def load_own_variables(self, store):
        load_full_values(
            lambda staged: original(self, staged),
            dict(enumerate_keys(self.variables)),
            store,
        )

    return load_own_variables


def install_optimizer_hooks():
    """Teaches Keras' TensorFlow optimizer about expert shards; idempotent.

    Raises:
        NotImplementedError: on a Keras outside
            `tf_switch.keras_internals.SUPPORTED_KERAS`.
    """
    hook_tf_optimizer(
        "expert_shards",
        all_reduce_gradients=_skip_all_reduce_for_shards,
        add_variable_from_reference=_mark_slots_of_shards,
        save_own_variables=_save_full_slots,
        load_own_variables=_load_full_slots,
    )

"""Moving weights between models of different sparsity, by variable path.

Keras 3 names every variable by its layer path (`block_1/attention/query/
kernel`), and a dense model and its Switch twin share every path except
their FFNs'. The model surgery here (upcycling, pruning) copies what matches
by path and rewrites the FFNs itself.
"""

import numpy as np

from tf_switch.distribute.expert_shards import (
    assign_expert_weight,
    gather_expert_weight,
    is_expert_shard,
)
from tf_switch.layers import SwitchBlock


def value(variable):
    """A variable's full numpy value (an expert shard's experts gathered)."""
    if is_expert_shard(variable):
        return gather_expert_weight(variable)
    return np.asarray(variable.numpy())


def assign(variable, new_value):
    """Assigns a full value (an expert shard gets its own experts)."""
    new_value = np.asarray(new_value)
    if tuple(new_value.shape) != tuple(_full_shape(variable)):
        raise ValueError(
            f"Cannot assign a value of shape {new_value.shape} to "
            f"{variable.path}, of shape {_full_shape(variable)}."
        )
    if is_expert_shard(variable):
        assign_expert_weight(variable, new_value)
    else:
        variable.assign(new_value)


def _full_shape(variable):
    if is_expert_shard(variable):
        return gather_expert_weight(variable).shape
    return tuple(variable.shape)


def copy_matching_weights(source, target):
    """Copies every `source` variable into the `target` variable of the same
    path and shape; returns the set of paths assigned."""
    values = {variable.path: variable for variable in source.weights}
    assigned = set()
    for variable in target.weights:
        origin = values.get(variable.path)
        if origin is not None and _full_shape(origin) == _full_shape(variable):
            assign(variable, value(origin))
            assigned.add(variable.path)
    return assigned


def switch_blocks(model):
    """`{name: block}` of the model's `SwitchBlock`s, in model order."""
    return {
        layer.name: layer for layer in model.layers if isinstance(layer, SwitchBlock)
    }


def check_all_assigned(target, assigned, allowed_fresh=()):
    """Raises if a `target` variable got no value, unless its path is in
    `allowed_fresh` (variables meant to keep their initialization)."""
    missing = [
        variable.path
        for variable in target.weights
        if variable.path not in assigned and variable.path not in allowed_fresh
    ]
    if missing:
        raise ValueError(
            f"No source weight matches these variables of the new model: "
            f"{missing}. The models must share every layer name and shape "
            "outside their FFNs."
        )


def rebuild(model, config):
    """A new, untrained model of `model`'s class with `config` (a
    `ModelConfig`) in place of its own."""
    return model.__class__.from_config(
        {**model.get_config(), "config": config.to_dict()}
    )

"""Expert pruning: measure each expert's traffic on calibration text, keep
the k most used experts of every Switch layer.

    usage = expert_usage(model, batches)          # {layer: {"load", "mass"}}
    small = prune_experts(model, keep=4, usage=usage)

A pruned layer keeps its experts' weights and the matching columns of its
router kernel, so a token's router probabilities are its old ones
renormalized over the kept experts (the softmax of the kept logits), and a
token whose favourite expert was removed goes to its best remaining one.
Capacity is recomputed from the new N (it is a function of N), so the kept
experts get proportionally more slots. `keep=1` makes each Switch FFN its
one kept expert with gate 1: the dense twin's shape.
"""

import numpy as np
import tensorflow as tf

from tf_switch.lifecycle.weights import (
    assign,
    check_all_assigned,
    copy_matching_weights,
    rebuild,
    switch_blocks,
    value,
)

CRITERIA = ("load", "mass")


def _block_routing(model):
    """A function of token ids returning each Switch layer's per-token router
    probabilities, `{block name: <float32>[batch, length, N]}`; walks the
    blocks of a `SwitchLanguageModel` (`token_embedding`,
    `position_embedding`, `block_<i>`)."""
    blocks = switch_blocks(model)

    @tf.function
    def route(token_ids):
        hidden = model.get_layer("token_embedding")(token_ids)
        hidden = model.get_layer("position_embedding")(hidden)
        probabilities = {}
        for name, block in blocks.items():
            hidden, stats = block(hidden, training=False, return_router_stats=True)
            if stats is not None:
                probabilities[name] = stats["token_router_probs"]
        return probabilities

    return route


def expert_usage(model, batches):
    """Each Switch layer's expert load and router mass on calibration data.

    Args:
        model: a trained Switch `SwitchLanguageModel`.
        batches: an iterable of `<int32>[batch, length]` token ids, or of
            `(token_ids, targets)` pairs (a training dataset).

    Returns:
        `{block name: {"load": [N], "mass": [N]}}`, float lists: `load` is the
        fraction of tokens whose most probable expert is i (before any
        dropping), `mass` the mean router probability of expert i.

    Example:

    >>> import numpy as np
    >>> from tf_switch.models import SwitchLanguageModel, get_preset
    >>> model = SwitchLanguageModel(get_preset(
    ...     "tiny", num_layers=2, vocab_size=50, sequence_length=8,
    ...     hidden_dim=16, intermediate_dim=32, num_heads=2, num_experts=4))
    >>> usage = expert_usage(model, [np.ones((2, 8), "int32")])
    >>> round(sum(usage["block_1"]["load"]), 6)
    1.0
    """
    route = _block_routing(model)
    load, mass, tokens = {}, {}, 0
    for batch in batches:
        token_ids = batch[0] if isinstance(batch, (tuple, list)) else batch
        probabilities = route(tf.convert_to_tensor(token_ids, tf.int32))
        for name, probs in probabilities.items():
            probs = np.asarray(probs, np.float64).reshape(-1, probs.shape[-1])
            top = np.bincount(probs.argmax(axis=-1), minlength=probs.shape[-1])
            load[name] = load.get(name, 0) + top
            mass[name] = mass.get(name, 0) + probs.sum(axis=0)
        tokens += int(np.prod(np.shape(token_ids)))
    if not tokens:
        raise ValueError("expert_usage() needs at least one calibration batch.")
    return {
        name: {
            "load": (load[name] / tokens).tolist(),
            "mass": (mass[name] / tokens).tolist(),
        }
        for name in load
    }


def kept_experts(usage, keep, criterion="load"):
    """`{block name: sorted indices of the `keep` most used experts}`.

    `criterion="load"` ranks by token count, ties broken by router mass;
    `"mass"` by router mass alone.
    """
    if criterion not in CRITERIA:
        raise ValueError(
            f"Invalid value received for argument `criterion`. Expected one of "
            f"{CRITERIA}. Received: criterion={criterion!r}"
        )
    kept = {}
    for name, stats in usage.items():
        load, mass = np.asarray(stats["load"]), np.asarray(stats["mass"])
        keys = (mass,) if criterion == "mass" else (mass, load)  # last key first
        order = np.lexsort(tuple(-key for key in keys))
        kept[name] = sorted(int(i) for i in order[:keep])
    return kept


def prune_experts(model, keep, usage, criterion="load"):
    """A smaller copy of a Switch model with the `keep` most used experts of
    each Switch layer.

    Args:
        model: a trained Switch `SwitchLanguageModel` (or encoder).
        keep: experts kept per layer, 1 <= keep <= N. With 1, every Switch FFN
            becomes a dense FFN (its kept expert; the one-expert router's gate
            is always 1, so this is exact), the dense twin's shape.
        usage: `expert_usage(model, calibration_batches)`.
        criterion: `"load"` (token count) or `"mass"` (router probability).

    Returns:
        `(pruned_model, kept)`: a new built model and `{block name: [kept
        expert indices]}`.

    Raises:
        ValueError: for `keep` outside [1, N], a dense model, usage of other
            layers, or `keep=1` with a shared expert (a dense block has one
            FFN).

    Example:

    >>> import numpy as np
    >>> from tf_switch.models import SwitchLanguageModel, get_preset
    >>> model = SwitchLanguageModel(get_preset(
    ...     "tiny", num_layers=2, vocab_size=50, sequence_length=8,
    ...     hidden_dim=16, intermediate_dim=32, num_heads=2, num_experts=4))
    >>> usage = expert_usage(model, [np.ones((2, 8), "int32")])
    >>> small, kept = prune_experts(model, keep=2, usage=usage)
    >>> small.config.num_experts, len(kept["block_1"])
    (2, 2)
    """
    config = model.config
    if config.num_experts is None:
        raise ValueError("prune_experts() needs a Switch model; this one is dense.")
    if isinstance(keep, bool) or not isinstance(keep, int):
        raise ValueError(f"`keep` must be an int. Received: keep={keep!r}")
    if not 1 <= keep <= config.num_experts:
        raise ValueError(
            "Invalid value received for argument `keep`. Expected an int in "
            f"[1, num_experts={config.num_experts}]. Received: keep={keep}"
        )
    blocks = {
        name: block
        for name, block in switch_blocks(model).items()
        if block.num_experts is not None
    }
    if set(usage) != set(blocks):
        raise ValueError(
            f"`usage` covers layers {sorted(usage)}, but the model's Switch "
            f"layers are {sorted(blocks)}. Measure it with expert_usage(model, ...)."
        )
    options = config.switch_options
    if keep == 1:
        if options.shared_expert_dim is not None:
            raise ValueError(
                "keep=1 turns each Switch FFN into one dense FFN, which cannot "
                "also hold the shared expert. Keep at least 2 experts."
            )
        new_config = config.dense_twin()
    else:
        new_config = config.replace(
            num_experts=keep,
            switch_options=options.replace(top_k=min(options.top_k, keep)),
        )
    kept = kept_experts(usage, keep, criterion)
    pruned = rebuild(model, new_config)
    assigned = copy_matching_weights(model, pruned)
    for name, block in blocks.items():
        index = kept[name]
        target = pruned.get_layer(name).ffn
        target_experts = target if keep == 1 else target.experts
        for variable, origin in zip(
            target_experts.weights, block.ffn.experts.weights, strict=True
        ):
            assign(variable, value(origin)[index])
            assigned.add(variable.path)
        if keep > 1:
            router = target.router.kernel
            assign(router, value(block.ffn.router.kernel)[:, index])
            assigned.add(router.path)
    check_all_assigned(pruned, assigned)
    return pruned, kept

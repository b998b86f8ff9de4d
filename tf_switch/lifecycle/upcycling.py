"""Sparse upcycling: a trained dense model becomes a Switch model whose
outputs at step 0 are the dense model's.

The exact scheme (Komatsuzaki et al. 2022 for the decoder, made exact):

1. Every weight outside the FFNs is copied by variable path.
2. In each block that becomes sparse, every expert is a copy of the block's
   dense FFN (`wi`, `wo` and biases repeated N times).
3. The router starts from its usual random initialization, and each token
   goes to its `top_k >= 2` most probable experts with gates normalized to
   sum to 1 over its kept choices (`SwitchOptions.normalize_gates`). Since
   all experts are the same function E, a token's output is
   `sum_k p_k E(x) / sum_k p_k = E(x)`: the dense FFN's, whatever the router
   says. The router still learns from the loss, through the relative
   weights of a token's experts once they differ.
4. An optional shared expert starts with a zero output kernel, so it adds 0.

The equality holds for every token that keeps at least one of its choices;
a token dropped by all its experts outputs 0 (the residual carries it), so
evaluate dropless (`eval_capacity_factor=None`, the default here) to have it
everywhere. Float rounding leaves differences of about 1e-6 in the logits.

With `top_k=1` the normalized gate is always exactly 1, so the router gets
no gradient from the loss at all: upcycling warns.
"""

import warnings

import numpy as np

from tf_switch.lifecycle.weights import (
    assign,
    check_all_assigned,
    copy_matching_weights,
    rebuild,
    switch_blocks,
    value,
)
from tf_switch.options import SwitchOptions

# Top-2 with normalized gates; capacity doubled for the two choices per token
# (capacity does not scale with k), dropless in evaluation.
UPCYCLING_OPTIONS = SwitchOptions(
    top_k=2, normalize_gates=True, capacity_factor=2.5, eval_capacity_factor=None
)


def upcycle(dense_model, num_experts=8, switch_options=None, sparse_every=None):
    """A Switch model initialized from a trained dense model, same outputs.

    The FFN layers are found by this rule: the new model has the dense
    model's class and config with `num_experts`, `sparse_every` and
    `switch_options` replaced; each of its sparse `SwitchBlock`s takes its
    experts from the FFN (`block.ffn`, a one-expert `ExpertFFN`) of the
    dense model's block of the same name, and every other weight comes from
    the dense variable of the same path. See the module docstring for why the
    outputs match.

    Args:
        dense_model: a `SwitchLanguageModel` or `SwitchEncoder` whose config
            has `num_experts=None` (e.g. trained with `--experts 0`).
        num_experts: N, experts per Switch FFN; None copies the dense model
            as it is (a plain continuation).
        switch_options: the Switch FFNs' `SwitchOptions` (or dict); must have
            `normalize_gates=True`. Default `UPCYCLING_OPTIONS`: top-2,
            capacity factor 2.5 in training, dropless evaluation.
        sparse_every: a Switch FFN in every `sparse_every`-th block; default
            the dense model's config value (2 in the presets).

    Returns:
        A new model of the dense model's class, built, with the copied
        weights; compile it to continue training.

    Raises:
        ValueError: for a sparse `dense_model`, or options without
            `normalize_gates` (the outputs would not match).

    Example:

    >>> import numpy as np
    >>> from tf_switch.models import SwitchLanguageModel, get_preset
    >>> config = get_preset("tiny", num_layers=2, vocab_size=50,
    ...                     sequence_length=8, hidden_dim=16,
    ...                     intermediate_dim=32, num_heads=2)
    >>> dense = SwitchLanguageModel(config.dense_twin())
    >>> sparse = upcycle(dense, num_experts=4)
    >>> ids = np.ones((2, 8), "int32")
    >>> bool(np.abs(sparse(ids) - dense(ids)).max() < 1e-5)
    True

    References:
        Komatsuzaki et al., "Sparse Upcycling: Training Mixture-of-Experts
        from Dense Checkpoints", arXiv 2212.05055, §3.
    """
    config = dense_model.config
    if config.num_experts is not None:
        raise ValueError(
            "upcycle() turns a dense model into a Switch model, but this model "
            f"already has num_experts={config.num_experts}. Pass a model "
            "trained with num_experts=None (--experts 0)."
        )
    if num_experts is None:
        copy = rebuild(dense_model, config)
        check_all_assigned(copy, copy_matching_weights(dense_model, copy))
        return copy
    options = SwitchOptions.from_config(
        UPCYCLING_OPTIONS if switch_options is None else switch_options
    )
    if not options.normalize_gates:
        raise ValueError(
            "Upcycled outputs equal the dense model's only with gates that sum "
            "to 1 over a token's experts. Pass switch_options with "
            "normalize_gates=True (and top_k=2), e.g. "
            "tf_switch.lifecycle.UPCYCLING_OPTIONS. Received: "
            "normalize_gates=False"
        )
    if options.top_k == 1:
        warnings.warn(
            "Upcycling with top_k=1 and normalized gates: every gate is 1, so "
            "the router learns from its auxiliary losses only. Use top_k=2.",
            stacklevel=2,
        )
    sparse_config = config.replace(
        num_experts=num_experts,
        sparse_every=sparse_every or config.sparse_every,
        switch_options=options,
    )
    model = rebuild(dense_model, sparse_config)
    assigned = copy_matching_weights(dense_model, model)
    fresh = set()
    for name, block in switch_blocks(model).items():
        if block.num_experts is None:
            continue
        dense_ffn = dense_model.get_layer(name).ffn
        experts = block.ffn.experts
        for variable, origin in zip(experts.weights, dense_ffn.weights, strict=True):
            assign(variable, np.repeat(value(origin), num_experts, axis=0))
            assigned.add(variable.path)
        fresh.add(block.ffn.router.kernel.path)
        shared = block.ffn.shared_expert
        if shared is not None:
            assign(shared.ffn.wo, np.zeros(shared.ffn.wo.shape, "float32"))
            fresh.update(variable.path for variable in shared.weights)
    check_all_assigned(model, assigned, fresh)
    return model

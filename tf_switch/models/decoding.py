"""Incremental decoding of a `SwitchLanguageModel` with a key/value cache.

    decoder = CachedDecoder(inference_model(model))
    logits, cache, _ = decoder.forward(padded_prompts, decoder.empty_cache(batch),
                                       tf.zeros([batch], tf.int32))  # prefill
    logits, cache, experts = decoder.forward(next_tokens[:, None], cache,
                                             positions)  # one step

A prefill runs the whole window once and fills every attention layer's cache;
each step then runs one new position per row, attending to the cache, so n
new tokens cost n one-position passes instead of n full-window passes.

Exactness. With no expert capacity at inference (dropless), a token's
routing depends on that token alone, so routing one new token per step is
the routing of the full sequence, and the cached logits equal the full
forward pass's at every position (tests/models/test_decoding.py). A capacity
limit in the full pass could drop a token that one-at-a-time decoding never
drops, which is why `inference_model` routes dropless (DESIGN: route dropless
at inference) and `CachedDecoder` refuses a model that does not.
"""

import keras
import tensorflow as tf

from tf_switch.distribute import logical_weights
from tf_switch.keras_internals import flatten_layers
from tf_switch.layers import SwitchRouter


def inference_model(model, **switch_changes):
    """A float32, dropless copy of a model of ours that routes per sequence.

    `model` is a `SwitchLanguageModel`, `SwitchEncoder` or `SwitchViT` (any
    model with a `config` that `from_config` rebuilds).

    Training may group tokens across sequences, drop tokens at its evaluation
    capacity and run in bfloat16 on a TPU; inference needs each sequence as
    its own routing group, no capacity (so no output depends on the rest of
    the batch, on padding or on later tokens) and float32. The copy is built
    on the CPU (call this outside `strategy.scope()`), so no TPU variable or
    op reaches a serving graph. The weights are copied by value
    (`logical_weights`: an expert-parallel model's experts gathered to full
    `[N, ...]`); dropout is inactive at inference anyway, and the routers
    update no metric (a request must not write state).

    `switch_changes` override `SwitchOptions` fields of the copy after
    `for_serving()`, e.g. `eval_capacity_factor=0.5` to evaluate a trained
    ViT with V-MoE's capacity below one.

    Example:

    >>> from tf_switch.models import SwitchViT, get_preset
    >>> vit = SwitchViT(get_preset("vit-tiny", num_layers=2), num_classes=3)
    >>> copy = inference_model(vit, eval_capacity_factor=0.5)
    >>> copy.config.switch_options.eval_capacity_factor
    0.5
    """
    config = model.config
    if config.num_experts is not None:
        options = config.switch_options.for_serving().replace(**switch_changes)
        config = config.replace(switch_options=options)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        with tf.device("/cpu:0"):
            copy = type(model).from_config(
                {**model.get_config(), "config": config.to_dict()}
            )
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(logical_weights(model))
    for layer in flatten_layers(copy):
        if isinstance(layer, SwitchRouter):
            layer.update_metrics = False
    return copy


def _check_decodable(config):
    options = config.switch_options
    if config.num_experts is not None and (
        options.group_size is not None or options.eval_capacity_factor is not None
    ):
        raise ValueError(
            "Cached decoding needs per-sequence, dropless routing (no group_size, "
            "eval_capacity_factor=None), or it would not equal the full forward "
            f"pass. Received switch_options={options}. Decode with "
            "`inference_model(model)`, a copy that routes that way."
        )


class CachedDecoder:
    """Prefill and one-position steps of a `SwitchLanguageModel`, with a cache.

    Not a layer: it calls the model's own layers (embeddings, blocks through
    `SwitchBlock.call_with_cache`, final norm, tied output projection), so it
    holds no weights of its own and works on any built `SwitchLanguageModel`
    that routes dropless per sequence (see `inference_model`).

    Args:
        model: a `SwitchLanguageModel`, float32, `group_size=None` and
            `eval_capacity_factor=None` in its Switch layers.

    Attributes:
        context_length: L, the model's positions: prompt plus new tokens.
        num_switch_layers: S, Switch FFNs whose experts `forward` reports.
    """

    def __init__(self, model):
        config = model.config
        _check_decodable(config)
        self.model = model
        self.context_length = config.sequence_length
        self.vocab_size = config.vocab_size
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_dim // config.num_heads
        self.token_embedding = model.get_layer("token_embedding")
        self.position_embedding = model.get_layer("position_embedding")
        self.blocks = [model.get_layer(f"block_{i}") for i in range(config.num_layers)]
        self.final_norm = model.get_layer("final_norm")
        self.num_switch_layers = sum(
            config.is_sparse(i) for i in range(config.num_layers)
        )

    def empty_cache(self, batch_size):
        """One `(keys, values)` pair per block, `<float32>[B, L, H, D]` zeros."""
        shape = [batch_size, self.context_length, self.num_heads, self.head_dim]
        return tuple(
            (tf.zeros(shape, tf.float32), tf.zeros(shape, tf.float32))
            for _ in self.blocks
        )

    def forward(self, token_ids, cache, cache_index):
        """Runs T new positions per row through the model, updating the cache.

        Args:
            token_ids: `<int32>[B, T]`, T static: row b's tokens at positions
                `cache_index[b] .. cache_index[b] + T - 1`, all < L.
            cache: from `empty_cache` or a previous `forward`.
            cache_index: `<int32>[B]`.

        Returns:
            `(logits <float32>[B, T, V], cache, experts <int32>[B, T, S])`,
            `experts[..., s]` the expert of Switch layer s for each token.
        """
        steps = token_ids.shape[1]
        positions = cache_index[:, None] + tf.range(steps)[None, :]  # [B, T]
        hidden = self.token_embedding(token_ids)  # [B, T, d]
        table = self.position_embedding.position_embeddings  # [L, d]
        hidden += tf.cast(tf.gather(table, positions), hidden.dtype)
        new_cache, experts = [], []
        for block, (keys, values) in zip(self.blocks, cache, strict=True):
            hidden, keys, values, expert = block.call_with_cache(
                hidden, keys, values, cache_index
            )
            new_cache.append((keys, values))
            if expert is not None:
                experts.append(expert)
        logits = self.token_embedding(self.final_norm(hidden), reverse=True)
        if experts:
            experts = tf.stack(experts, axis=-1)  # [B, T, S]
        else:
            experts = tf.zeros(tf.concat([tf.shape(token_ids), [0]], 0), tf.int32)
        return tf.cast(logits, tf.float32), tuple(new_cache), experts

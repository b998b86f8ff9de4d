"""Model configurations: plain config objects, presets and the dense twin."""

import dataclasses

from tf_switch.options import SwitchOptions


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The shape of a Switch transformer, shared by the LM and the encoder.

    Args:
        vocab_size: token vocabulary size.
        sequence_length: maximum (and, for the LM, training) sequence length.
        hidden_dim: model width d.
        intermediate_dim: FFN width of each expert (and of dense FFNs).
        num_layers: transformer blocks.
        num_heads: attention heads.
        num_experts: experts per Switch FFN, or None for a dense model.
        sparse_every: a Switch FFN in every `sparse_every`-th block (the paper
            uses 2: experts in every other FFN layer), counted from the second
            block, i.e. blocks 1, 3, 5, ... for 2; 1 makes every block sparse.
        dropout: residual and embedding dropout.
        attention_dropout: dropout on attention probabilities.
        expert_dropout: dropout inside the FFNs.
        activation: FFN activation, `"relu"`, `"gelu"` or `"gated-gelu"`.
        tie_embeddings: share the token embedding with the output projection.
        switch_options: the Switch FFNs' `tf_switch.options.SwitchOptions`
            (capacity factors, `group_size`, `top_k`, `dispatch`, loss
            weights, jitter, ...); a dict of its fields is converted.

    Example:

    >>> config = PRESETS["switch-base-8"]
    >>> config.num_experts, config.dense_twin().num_experts
    (8, None)
    """

    vocab_size: int
    sequence_length: int
    hidden_dim: int
    intermediate_dim: int
    num_layers: int
    num_heads: int
    num_experts: int | None = 8
    sparse_every: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.0
    expert_dropout: float = 0.0
    activation: str = "relu"
    tie_embeddings: bool = True
    switch_options: SwitchOptions = SwitchOptions()

    def __post_init__(self):
        # Frozen: set the converted value the way dataclasses do.
        object.__setattr__(
            self, "switch_options", SwitchOptions.from_config(self.switch_options)
        )
        if self.sparse_every < 1:
            raise ValueError(
                "Invalid value received for `sparse_every`. Expected an int >= 1. "
                f"Received: sparse_every={self.sparse_every}"
            )
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim={self.hidden_dim} must be divisible by "
                f"num_heads={self.num_heads}."
            )

    def is_sparse(self, layer_index):
        """Whether block `layer_index` (0-based) has a Switch FFN."""
        return (
            self.num_experts is not None and (layer_index + 1) % self.sparse_every == 0
        )

    def dense_twin(self):
        """The same model with every Switch FFN replaced by a dense FFN of the
        same width: equal FLOPs per token for top-1 routing."""
        return dataclasses.replace(
            self, num_experts=None, switch_options=SwitchOptions()
        )

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)


def _switch_base(num_experts):
    # Switch-Base (paper Table 9): T5-Base shapes, experts in every other FFN.
    return ModelConfig(
        vocab_size=32128,
        sequence_length=512,
        hidden_dim=768,
        intermediate_dim=3072,
        num_layers=12,
        num_heads=12,
        num_experts=num_experts,
        sparse_every=2,
        dropout=0.1,
        switch_options=SwitchOptions(group_size=4096),
    )


_TINY = ModelConfig(
    vocab_size=2000,
    sequence_length=64,
    hidden_dim=128,
    intermediate_dim=256,
    num_layers=4,
    num_heads=4,
    num_experts=8,
    sparse_every=2,
    dropout=0.1,
    switch_options=SwitchOptions(group_size=1024),
)

# A ViT for 28x28 one-channel images in 4x4 patches (49 tokens). Each image
# is its own routing group, and batch-prioritized routing (V-MoE) with
# min_capacity 1 lets a low eval_capacity_factor skip the least confident
# patches of every image.
_VIT_TINY = ModelConfig(
    vocab_size=0,
    sequence_length=49,
    hidden_dim=64,
    intermediate_dim=128,
    num_layers=4,
    num_heads=4,
    num_experts=8,
    sparse_every=2,
    dropout=0.1,
    switch_options=SwitchOptions(min_capacity=1, batch_prioritized_routing=True),
)

PRESETS = {
    # Trains on 2 CPU cores in minutes.
    "tiny": _TINY,
    "vit-tiny": _VIT_TINY,
    # tiny plus a gated shared expert as wide as the experts (Qwen-MoE).
    "tiny-shared": _TINY.replace(
        switch_options=_TINY.switch_options.replace(
            shared_expert_dim=256, shared_expert_gate=True
        )
    ),
    "switch-base-8": _switch_base(8),
    "switch-base-32": _switch_base(32),
    "switch-base-128": _switch_base(128),
}


def get_preset(name, **overrides):
    """A preset by name, with fields overridden.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Expected one of {sorted(PRESETS)}.")
    return PRESETS[name].replace(**overrides)

"""Typed options of a Switch layer, shared by the layers, configs, CLI and export.

`RouterOptions` holds how tokens are routed (what `SwitchRouter` takes);
`SwitchOptions` adds how a `SwitchFFN` groups and dispatches them. Both are
frozen dataclasses that validate themselves, so a bad value fails where it is
written (a preset, a flag, a JSON config), and `ModelConfig` can hold one
without sharing a mutable dict.

Example:

>>> options = SwitchOptions(capacity_factor=1.0, group_size=1024)
>>> options.replace(top_k=2).router_options().top_k
2
>>> SwitchOptions.from_config({"capacity_factor": None}).capacity_factor is None
True
"""

import dataclasses

from tf_switch.dispatch import DISPATCH_METHODS

ROUTING_METHODS = ("tokens_choose", "experts_choose")


def _invalid(name, expected, value):
    return ValueError(
        f"Invalid value received for argument `{name}`. Expected {expected}. "
        f"Received: {name}={value!r}"
    )


def _check_capacity_factor(name, value):
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
    ):
        raise _invalid(name, "a positive float, or None for dropless routing", value)


@dataclasses.dataclass(frozen=True)
class RouterOptions:
    """How a Switch router assigns tokens to experts (paper §2.1-2.2).

    Args:
        top_k: choices per token for tokens-choose routing (1 is Switch).
            Capacity does not scale with k: raise `capacity_factor` k-fold
            to keep the same drop rate.
        routing: `"tokens_choose"` or `"experts_choose"` (Zhou et al. 2022).
        capacity_factor: in training; None routes dropless (no token is
            dropped).
        eval_capacity_factor: in evaluation and inference; None is dropless.
        min_capacity: smallest expert capacity C.
        batch_prioritized_routing: route the most confident tokens first
            (paper Appendix D); not for causal models.
        jitter_noise: eps of the multiplicative router-input jitter
            U(1 - eps, 1 + eps), training only.
        load_balance_loss_weight: alpha of the load-balancing loss (Eq. 4).
        router_z_loss_weight: weight of the router z-loss (ST-MoE); not
            multiplied by alpha.
        per_expert_metrics: log each expert's token fraction.
    """

    top_k: int = 1
    routing: str = "tokens_choose"
    capacity_factor: float | None = 1.25
    eval_capacity_factor: float | None = 2.0
    min_capacity: int = 4
    batch_prioritized_routing: bool = False
    jitter_noise: float = 0.0
    load_balance_loss_weight: float = 0.01
    router_z_loss_weight: float = 0.001
    per_expert_metrics: bool = True

    def __post_init__(self):
        if self.routing not in ROUTING_METHODS:
            raise _invalid("routing", f"one of {ROUTING_METHODS}", self.routing)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise _invalid("top_k", "a positive int", self.top_k)
        if self.top_k < 1:
            raise _invalid("top_k", "a positive int", self.top_k)
        if self.routing == "experts_choose" and self.top_k != 1:
            raise ValueError(
                "`top_k` applies to tokens-choose routing only; with "
                f"routing='experts_choose' leave it at 1. Received: top_k="
                f"{self.top_k}"
            )
        _check_capacity_factor("capacity_factor", self.capacity_factor)
        _check_capacity_factor("eval_capacity_factor", self.eval_capacity_factor)
        if self.routing == "experts_choose" and None in (
            self.capacity_factor,
            self.eval_capacity_factor,
        ):
            raise ValueError(
                "Expert-choice routing needs a capacity factor: with None every "
                "expert would take every token. Received: capacity_factor="
                f"{self.capacity_factor}, eval_capacity_factor="
                f"{self.eval_capacity_factor}"
            )
        if (
            isinstance(self.min_capacity, bool)
            or not isinstance(self.min_capacity, int)
            or self.min_capacity < 1
        ):
            raise _invalid("min_capacity", "a positive int", self.min_capacity)
        if not 0.0 <= self.jitter_noise < 1.0:
            raise _invalid("jitter_noise", "a float in [0, 1)", self.jitter_noise)
        for name in ("load_balance_loss_weight", "router_z_loss_weight"):
            if getattr(self, name) < 0:
                raise _invalid(name, "a float >= 0", getattr(self, name))

    @classmethod
    def field_names(cls):
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_config(cls, config):
        """From a dict of field values (a JSON config, a layer's config).

        Raises:
            ValueError: for a key that is not a field, listing the fields.
        """
        if isinstance(config, cls):
            return config
        unknown = set(config or {}) - set(cls.field_names())
        if unknown:
            raise ValueError(
                f"Unknown {cls.__name__} {sorted(unknown)}. Expected some of "
                f"{list(cls.field_names())}."
            )
        return cls(**(config or {}))

    def to_config(self):
        """The fields as a JSON-serializable dict."""
        return dataclasses.asdict(self)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class SwitchOptions(RouterOptions):
    """`RouterOptions` plus how a `SwitchFFN` groups and dispatches tokens.

    Args:
        group_size: tokens per routing group; None makes each sequence its own
            group (a sequence's outputs never depend on the rest of its
            batch). See `SwitchFFN`.
        dispatch: `"gather"` (static slots, any device), `"einsum"` (one-hot
            matmuls, TPU) or `"sorted"` (tokens sorted by expert, no padded
            slot; CPU/GPU, not XLA). Dropless modes always dispatch sorted.
        expert_parallel: shard the experts over the replicas of the
            `tf.distribute` strategy the layer is built under (see
            `tf_switch.distribute.expert_parallel`).
        shared_expert_dim: hidden width of a shared expert, a dense FFN that
            every token passes through beside its routed experts, whose
            output is added to theirs (DeepSpeed-MoE's residual MoE,
            Qwen-MoE's shared expert); None (default): no shared expert. It
            stays data-parallel under `expert_parallel`.
        shared_expert_gate: scale the shared expert's output per token by a
            learned gate sigmoid(x w), as Qwen-MoE does; needs
            `shared_expert_dim`.
        normalize_gates: divide each token's output by the sum of the router
            probabilities of its kept choices, so its gates sum to 1 (Mixtral,
            sparse upcycling) instead of being p_i(x) (Switch). With
            `top_k=1` the gate is then always 1 and the router learns from
            its auxiliary losses only; use it with `top_k >= 2`.
        **router options: see `RouterOptions`.
    """

    group_size: int | None = None
    dispatch: str = "gather"
    expert_parallel: bool = False
    shared_expert_dim: int | None = None
    shared_expert_gate: bool = False
    normalize_gates: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.group_size is not None and (
            isinstance(self.group_size, bool)
            or not isinstance(self.group_size, int)
            or self.group_size < 1
        ):
            raise _invalid("group_size", "a positive int or None", self.group_size)
        if self.dispatch not in DISPATCH_METHODS:
            raise _invalid("dispatch", f"one of {DISPATCH_METHODS}", self.dispatch)
        if not isinstance(self.expert_parallel, bool):
            raise _invalid("expert_parallel", "a bool", self.expert_parallel)
        if self.dispatch == "sorted" and self.routing != "tokens_choose":
            raise ValueError(
                "dispatch='sorted' is for tokens-choose routing; expert-choice "
                "routing fills C static slots per expert. Use dispatch='gather'. "
                f"Received: routing={self.routing!r}"
            )
        dropless = None in (self.capacity_factor, self.eval_capacity_factor)
        if self.expert_parallel and (self.dispatch == "sorted" or dropless):
            raise ValueError(
                "expert_parallel=True exchanges equal-size [N, C] slot buffers "
                "between replicas (a static all-to-all); dropless routing and "
                "dispatch='sorted' give each expert a variable number of tokens, "
                "which it cannot move. With expert_parallel=True set "
                "capacity_factor and eval_capacity_factor (e.g. 1.25 and 2.0) "
                "and dispatch='gather' or 'einsum'; or keep dropless without "
                "expert parallelism. Received: dispatch="
                f"{self.dispatch!r}, capacity_factor={self.capacity_factor}, "
                f"eval_capacity_factor={self.eval_capacity_factor}"
            )
        if self.shared_expert_dim is not None and (
            isinstance(self.shared_expert_dim, bool)
            or not isinstance(self.shared_expert_dim, int)
            or self.shared_expert_dim < 1
        ):
            raise _invalid(
                "shared_expert_dim", "a positive int or None", self.shared_expert_dim
            )
        for name in ("shared_expert_gate", "normalize_gates"):
            if not isinstance(getattr(self, name), bool):
                raise _invalid(name, "a bool", getattr(self, name))
        if self.shared_expert_gate and self.shared_expert_dim is None:
            raise ValueError(
                "`shared_expert_gate` gates the shared expert, but there is none. "
                "Set shared_expert_dim=... as well. Received: "
                "shared_expert_gate=True, shared_expert_dim=None"
            )

    def router_options(self):
        """The `RouterOptions` part."""
        return RouterOptions(
            **{name: getattr(self, name) for name in RouterOptions.field_names()}
        )

    def for_serving(self):
        """These options for a single-device serving copy of a trained model:
        each sequence its own routing group, experts whole, and dropless
        inference (`eval_capacity_factor=None`, dispatched sorted), so that a
        request's outputs depend neither on the other requests of its batch,
        nor on padding, nor (causal models) on its own later tokens."""
        return self.replace(
            group_size=None, expert_parallel=False, eval_capacity_factor=None
        )

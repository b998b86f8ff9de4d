"""Routing decisions as typed values: what the router decides, dispatch consumes.

A router's decision comes in one of three layouts, each a `NamedTuple` of
tensors (so it passes through `tf.function`, Keras' symbolic calls and
`tf.nest` like any nested structure). The layout says which dispatch
algorithms can move the tokens (`tf_switch.dispatch`); the dispatch method is
chosen by the caller, and a mismatch is an error, never a silent fallback.

Notation: G groups, T tokens per group, N experts, C slots per expert and
group, k choices per token, M routed (kept) choices in the whole call.

- `SlotRouting`: tokens-choose routing into C static slots per expert (the
  static shapes that XLA and TPUs need), with its token-major inverse, so
  that every pass of the gather dispatch is a gather.
- `ExpertChoiceRouting`: expert-choice routing into C static slots per expert;
  a token may fill any number of slots, so there is no per-token inverse.
- `SortedRouting`: tokens-choose routing as one buffer of the kept choices
  sorted by expert, M rows with a dynamic M: each expert computes exactly its
  own tokens, no padded slot (dropless routing, and capacity routing without
  empty slots).

Every layout has `kept <bool>[G, T, k]`: whether each valid choice was routed
(false for padding and for choices dropped over capacity).
"""

from typing import NamedTuple

import tensorflow as tf


class SlotRouting(NamedTuple):
    """Tokens-choose routing into `[G, N, C]` expert slots.

    Fields:
        slot_token: `<int32>[G, N, C]`, the token (index into its group) that
            fills each slot; 0 for an empty slot.
        slot_weight: `<float32>[G, N, C]`, the router probability that scales
            the slot's expert output; 0 for an empty slot.
        slot_mask: `<bool>[G, N, C]`, whether the slot holds a token.
        choice_slot: `<int32>[G, T, k]`, each choice's slot `n * C + c` in its
            group, or N*C when it was dropped (or is padding).
        choice_weight: `<float32>[G, T, k]`, each choice's gate; 0 when dropped.
        kept: `<bool>[G, T, k]`.
    """

    slot_token: tf.Tensor
    slot_weight: tf.Tensor
    slot_mask: tf.Tensor
    choice_slot: tf.Tensor
    choice_weight: tf.Tensor
    kept: tf.Tensor


class ExpertChoiceRouting(NamedTuple):
    """Expert-choice routing into `[G, N, C]` expert slots (Zhou et al. 2022).

    Fields:
        slot_token, slot_weight, slot_mask: as in `SlotRouting`.
        kept: `<bool>[G, T, 1]`, whether any expert took the (valid) token.
    """

    slot_token: tf.Tensor
    slot_weight: tf.Tensor
    slot_mask: tf.Tensor
    kept: tf.Tensor


class SortedRouting(NamedTuple):
    """Tokens-choose routing as kept choices sorted by expert: M rows.

    Rows `sum(expert_sizes[:n])` up to `sum(expert_sizes[:n + 1])` belong to
    expert n; within an expert, rows keep the routing priority order.

    Fields:
        sorted_token: `<int32>[M]`, each row's token as an index into all G*T
            tokens of the call (group-major).
        sorted_weight: `<float32>[M]`, each row's gate (router probability).
        expert_sizes: `<int32>[N]`, rows per expert; sums to M.
        choice_row: `<int32>[G, T, k]`, each choice's row, or M when it was
            dropped (or is padding).
        choice_weight: `<float32>[G, T, k]`, each choice's gate; 0 when dropped.
        kept: `<bool>[G, T, k]`.
    """

    sorted_token: tf.Tensor
    sorted_weight: tf.Tensor
    expert_sizes: tf.Tensor
    choice_row: tf.Tensor
    choice_weight: tf.Tensor
    kept: tf.Tensor


class RouterOutput(NamedTuple):
    """What `SwitchRouter` returns.

    Fields:
        decision: a `SlotRouting`, `ExpertChoiceRouting` or `SortedRouting`.
        router_logits: `<float32>[G, T, N]`.
        router_probs: `<float32>[G, T, N]`.
        stats: dict of float32 scalars (`load_balance_loss`, `router_z_loss`,
            unweighted, `dropped_fraction`, `router_confidence`) and
            `expert_fraction <float32>[N]`.
    """

    decision: NamedTuple
    router_logits: tf.Tensor
    router_probs: tf.Tensor
    stats: dict

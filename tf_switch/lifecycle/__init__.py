"""The life of a sparse model beyond training from scratch.

- `upcycle(dense_model, num_experts)`: a Switch model whose experts start as
  copies of a trained dense model's FFNs, with the dense model's outputs
  (sparse upcycling, Komatsuzaki et al. 2022).
- `expert_usage(model, batches)` and `prune_experts(model, keep, usage)`:
  keep the most used experts of each Switch layer.
- `DistillationModel(student, teacher)`: train a (dense) student on the
  teacher's soft targets and the true tokens under `model.fit` (Switch paper
  §4.2).

The shared expert is a `SwitchOptions` field (`shared_expert_dim`).
"""

from tf_switch.lifecycle.distillation import DistillationModel, distillation_loss
from tf_switch.lifecycle.pruning import expert_usage, kept_experts, prune_experts
from tf_switch.lifecycle.upcycling import UPCYCLING_OPTIONS, upcycle

__all__ = [
    "UPCYCLING_OPTIONS",
    "DistillationModel",
    "distillation_loss",
    "expert_usage",
    "kept_experts",
    "prune_experts",
    "upcycle",
]

"""Switch transformer models built from plain configs."""

from tf_switch.models.config import PRESETS, ModelConfig, get_preset
from tf_switch.models.encoder import SwitchEncoder
from tf_switch.models.language_model import SwitchLanguageModel
from tf_switch.models.report import model_report, parameter_and_flop_counts
from tf_switch.models.vision import SwitchViT

__all__ = [
    "PRESETS",
    "ModelConfig",
    "SwitchEncoder",
    "SwitchLanguageModel",
    "SwitchViT",
    "get_preset",
    "model_report",
    "parameter_and_flop_counts",
]

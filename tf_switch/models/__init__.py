"""Switch transformer models built from plain configs."""

from tf_switch.models.config import PRESETS, ModelConfig, get_preset
from tf_switch.models.encoder import SwitchEncoder
from tf_switch.models.language_model import SwitchLanguageModel
from tf_switch.models.report import model_report, parameter_and_flop_counts

__all__ = [
    "PRESETS",
    "ModelConfig",
    "SwitchEncoder",
    "SwitchLanguageModel",
    "get_preset",
    "model_report",
    "parameter_and_flop_counts",
]

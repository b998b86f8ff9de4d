"""Keras 3 layers of the Switch Transformer."""

from tf_switch.layers.expert_ffn import ExpertFFN
from tf_switch.layers.router_metrics import RouterMetrics
from tf_switch.layers.switch_block import SwitchBlock
from tf_switch.layers.switch_ffn import SwitchFFN
from tf_switch.layers.switch_router import SwitchRouter

__all__ = ["ExpertFFN", "RouterMetrics", "SwitchBlock", "SwitchFFN", "SwitchRouter"]

"""tf-switch: the Switch Transformer as Keras 3 layers on TensorFlow.

Fedus, Zoph & Shazeer, "Switch Transformers: Scaling to Trillion Parameter
Models with Simple and Efficient Sparsity", arXiv 2101.03961.
"""

from tf_switch.initializers import SwitchInitializer
from tf_switch.layers import ExpertFFN, SwitchBlock, SwitchFFN, SwitchRouter

__version__ = "0.1.0"

__all__ = [
    "ExpertFFN",
    "SwitchBlock",
    "SwitchFFN",
    "SwitchInitializer",
    "SwitchRouter",
]

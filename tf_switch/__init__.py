"""tf-switch: the Switch Transformer as Keras 3 layers on TensorFlow.

Fedus, Zoph & Shazeer, "Switch Transformers: Scaling to Trillion Parameter
Models with Simple and Efficient Sparsity", arXiv 2101.03961.
"""

# Importing the package registers every serializable class, so that
# `keras.saving.load_model` finds them in a `.keras` file.
from tf_switch.initializers import SwitchInitializer
from tf_switch.layers import ExpertFFN, SwitchBlock, SwitchFFN, SwitchRouter
from tf_switch.metrics import Perplexity
from tf_switch.models import SwitchEncoder, SwitchLanguageModel
from tf_switch.options import RouterOptions, SwitchOptions
from tf_switch.schedules import WarmupSchedule

__version__ = "0.2.0"

__all__ = [
    "ExpertFFN",
    "Perplexity",
    "RouterOptions",
    "SwitchBlock",
    "SwitchEncoder",
    "SwitchFFN",
    "SwitchInitializer",
    "SwitchLanguageModel",
    "SwitchOptions",
    "SwitchRouter",
    "WarmupSchedule",
]

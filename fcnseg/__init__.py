"""fcnseg: Fully Convolutional Networks for semantic segmentation, on PyTorch and torchvision."""
# the one place the version is written (pyproject.toml reads it); set before the imports below, which may read it
__version__ = "0.1.0"

from .inference import Predictor  # noqa: E402
from .models import build_model, list_models, model_spec, save_weights  # noqa: E402
from .normalization import Normalization  # noqa: E402
from .train.checkpoint import load_checkpoint  # noqa: E402
from .weights import load_weights  # noqa: E402
from .weights.registry import list_weights  # noqa: E402

__all__ = ["build_model", "list_models", "list_weights", "load_checkpoint", "load_weights", "model_spec",
           "Normalization", "Predictor", "save_weights"]

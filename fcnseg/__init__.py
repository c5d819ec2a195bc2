"""fcnseg: Fully Convolutional Networks for semantic segmentation, on PyTorch and torchvision."""
from .inference import Predictor
from .models import build_model, list_models, model_spec
from .normalization import Normalization
from .train.checkpoint import load_checkpoint
from .weights import load_weights

__version__ = "0.1.0"

__all__ = ["build_model", "list_models", "load_checkpoint", "load_weights", "model_spec", "Normalization",
           "Predictor"]

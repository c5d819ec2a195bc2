"""fcnseg: Fully Convolutional Networks for semantic segmentation, on PyTorch and torchvision."""
from .models import build_model, list_models, model_spec
from .normalization import Normalization

__version__ = "0.1.0"


def load_weights(model, path, *, format=None, strict_classes=False):  # noqa: A002 - "format" is the public name
    """Load a weight file into ``model``; the format is detected from the content (see :mod:`fcnseg.weights`)."""
    from .weights import load_weights as _load
    return _load(model, path, format=format, strict_classes=strict_classes)


def __getattr__(name):
    if name == "Predictor":  # lazy: inference pulls in more than model building needs
        from .inference import Predictor
        return Predictor
    raise AttributeError(name)


__all__ = ["build_model", "list_models", "load_weights", "model_spec", "Normalization", "Predictor"]

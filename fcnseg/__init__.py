"""fcnseg: Fully Convolutional Networks for semantic segmentation, on PyTorch and torchvision.

The public API is imported on first use (PEP 562): ``import fcnseg`` alone does not load torch, which takes seconds,
so the command line can refuse a bad input (a decompression bomb, a missing file) before it does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

# the one place the version is written (pyproject.toml reads it)
__version__ = "0.1.0"

__all__ = ["build_model", "list_models", "list_weights", "load_checkpoint", "load_weights", "model_spec",
           "Normalization", "Predictor", "save_weights"]

if TYPE_CHECKING:
    from .inference import Predictor
    from .models import build_model, list_models, model_spec, save_weights
    from .normalization import Normalization
    from .train.checkpoint import load_checkpoint
    from .weights import load_weights
    from .weights.registry import list_weights


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from .inference import Predictor
        return Predictor
    if name in ("build_model", "list_models", "model_spec", "save_weights"):
        from . import models
        return getattr(models, name)
    if name == "Normalization":
        from .normalization import Normalization
        return Normalization
    if name == "load_checkpoint":
        from .train.checkpoint import load_checkpoint
        return load_checkpoint
    if name == "load_weights":
        from .weights import load_weights
        return load_weights
    if name == "list_weights":
        from .weights.registry import list_weights
        return list_weights
    raise AttributeError(f"module 'fcnseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

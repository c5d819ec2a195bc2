"""The FCN (``fcn``), its backbones (``backbones``), torchvision's FCN as a peer (``baselines``), and the factory
that builds any of them by name (``factory``)."""
from .factory import GEOMETRIES, build_model, list_models, model_spec, save_weights
from .fcn import ARCHS, FCN, PAPER_ARCHS, head_slices

__all__ = ["ARCHS", "FCN", "GEOMETRIES", "PAPER_ARCHS", "build_model", "head_slices", "list_models", "model_spec",
           "save_weights"]

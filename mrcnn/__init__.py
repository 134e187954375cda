"""mrcnn: Mask R-CNN on TensorFlow 2 / Keras 3.

The public API is imported lazily so that `import mrcnn.utils` (numpy only) does not pay for
importing TensorFlow.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Config": ("mrcnn.config", "Config"),
    "C4Config": ("mrcnn.config", "C4Config"),
    "Dataset": ("mrcnn.data.dataset", "Dataset"),
    "CocoDataset": ("mrcnn.data.coco", "CocoDataset"),
    "DataGenerator": ("mrcnn.data.generator", "DataGenerator"),
    "MaskRCNN": ("mrcnn.model", "MaskRCNN"),
    "utils": ("mrcnn.utils", None),
    "visualize": ("mrcnn.visualize", None),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mrcnn' has no attribute {name!r}")
    module_name, attribute = _PUBLIC[name]
    module = import_module(module_name)
    return module if attribute is None else getattr(module, attribute)

"""mrcnn.layers: the Mask R-CNN graph layers without weights.

Each layer takes explicit constructor arguments (never a Config), is registered for Keras
serialization under the package ``"mrcnn"`` and documents its tensor shapes and coordinates.
"""

from mrcnn.layers.detection import DetectionLayer
from mrcnn.layers.detection_target import DetectionTargetLayer
from mrcnn.layers.proposal import ProposalLayer
from mrcnn.layers.roi_align import PyramidROIAlign, SingleLevelROIAlign

__all__ = ["DetectionLayer", "DetectionTargetLayer", "ProposalLayer", "PyramidROIAlign", "SingleLevelROIAlign"]

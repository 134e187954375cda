"""Dataset base class with matterport/Mask_RCNN's API.

Subclass `Dataset` to feed your own data: register classes with `add_class`, images with
`add_image`, override `load_mask` (and `image_reference` if you like), then call `prepare()`:

    class BalloonDataset(Dataset):
        def load_balloons(self, folder):
            self.add_class("balloon", 1, "balloon")
            for i, path in enumerate(sorted(Path(folder).glob("*.jpg"))):
                self.add_image("balloon", image_id=i, path=str(path), polygons=...)

        def load_mask(self, image_id):
            info = self.image_info[image_id]
            ...
            return masks, class_ids   # [H, W, N] bool, [N] int32

    dataset = BalloonDataset()
    dataset.load_balloons("balloon/train")
    dataset.prepare()

Ids: each class and image has a *source* (the dataset it comes from, e.g. "coco") and an id in that
source. `prepare()` numbers classes and images consecutively from 0 ("internal ids"); internal class
0 is always the background "BG". Everything downstream (training targets, detections) uses internal
ids; `map_source_class_id` / `get_source_class_id` translate.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage as ndi
import skimage.io

from mrcnn import utils

# Attributes that only exist after `prepare()`; see `Dataset.__getattr__`.
_PREPARED_ATTRIBUTES = (
    "num_classes",
    "class_ids",
    "class_names",
    "num_images",
    "class_from_source_map",
    "image_from_source_map",
    "sources",
    "source_class_ids",
)

UINT16_SCALINGS = ("range", "image_max")
# "range" scaling of a 16-bit image whose values stay below 4096 (12-bit data) leaves at most this
# many grey levels: `to_rgb_uint8` warns then.
LOW_RANGE_GREY_LEVELS = 17


class Dataset:
    """Base class for datasets: a registry of classes and images plus image/mask loading.

    Attributes:
        image_info: list of dicts, one per image in `add_image` order: ``id`` (the id in its
            source), ``source``, ``path`` and any extra keyword arguments given to `add_image`.
        class_info: list of dicts ``{"source", "id", "name"}``; entry 0 is the background.
        UINT16_SCALING: how `load_image` maps 16-bit images to 8 bits (class attribute; override
            in a subclass). ``"range"`` (default) divides by 257, mapping the full 0..65535 range
            onto 0..255, so a pixel value means the same brightness in every image.
            ``"image_max"`` divides by each image's own maximum (0 stays 0, the maximum becomes
            255): use it for 12-bit microscopy and similar data that only use a small part of the
            16-bit range and would come out nearly black with ``"range"``.

    After `prepare()`:
        num_classes (int), class_ids ([num_classes] int array, 0..num_classes-1), class_names
        (list of str), num_images (int), class_from_source_map ({"source.id": internal class id}),
        image_from_source_map ({"source.id": internal image id}), sources (sorted list of source
        names), source_class_ids ({source: [internal class ids]}, background 0 in every source).
    """

    UINT16_SCALING: str = "range"

    def __init__(self, class_map: dict | None = None) -> None:
        """Creates an empty dataset holding only the background class.

        Args:
            class_map: accepted for compatibility with matterport; unused.
        """
        del class_map  # matterport accepts and ignores it too
        self._image_ids = np.zeros([0], dtype=np.int64)
        self.image_info: list[dict[str, Any]] = []
        self.class_info: list[dict[str, Any]] = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids: dict[str, list[int]] = {}
        self._prepared = False

    def __getattr__(self, name: str) -> Any:
        # Only called for missing attributes: explain the usual cause instead of a bare AttributeError.
        if name in _PREPARED_ATTRIBUTES:
            raise AttributeError(
                f"{type(self).__name__}.{name} is not set: call dataset.prepare() after adding classes and images"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------------------------------
    # Registration
    def add_class(self, source: str, class_id: int, class_name: str) -> None:
        """Registers a class. Adding the same (source, class_id) twice keeps the first.

        Args:
            source: name of the dataset the class comes from, e.g. "coco"; must not contain ".".
            class_id: the class's id in that source (0 is reserved for the background).
            class_name: human readable name.

        Raises:
            ValueError: if `source` contains a dot (it would make "source.id" keys ambiguous).
        """
        if "." in source:
            raise ValueError(f"class source name must not contain '.': {source!r}")
        for info in self.class_info:
            if info["source"] == source and info["id"] == class_id:
                return
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source: str, image_id: Any, path: str | Path | None, **kwargs: Any) -> None:
        """Registers an image. Call `prepare()` again afterwards.

        Args:
            source: name of the dataset the image comes from.
            image_id: the image's id in that source (any hashable, usually int or str).
            path: file path or URL that `load_image` reads (None for generated images whose
                subclass overrides `load_image`).
            **kwargs: extra per-image data stored in `image_info[i]` (e.g. annotations, size).

        Raises:
            ValueError: if `source` contains a dot.
        """
        if "." in source:
            raise ValueError(f"image source name must not contain '.': {source!r}")
        info = {"id": image_id, "source": source, "path": str(path) if isinstance(path, Path) else path}
        info.update(kwargs)
        self.image_info.append(info)

    def image_reference(self, image_id: int) -> str:
        """Returns a string that locates the image: its path by default (subclasses may return a
        URL), else ``source:id`` for images added without one (generated images)."""
        info = self.image_info[image_id]
        path = info.get("path")
        return str(path) if path not in (None, "") else f"{info.get('source')}:{info.get('id')}"

    # ------------------------------------------------------------------------------------------
    # Preparation and id mapping
    def prepare(self, class_map: dict | None = None) -> None:
        """Builds internal ids and lookup tables; call after adding classes and images.

        Args:
            class_map: accepted for compatibility with matterport; unused.
        """
        del class_map

        def clean_name(name: str) -> str:
            # COCO-style names such as "person, people" -> "person".
            return ",".join(str(name).split(",")[:1])

        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        self.class_names = [clean_name(c["name"]) for c in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)

        self.class_from_source_map = {
            f"{info['source']}.{info['id']}": internal_id for info, internal_id in zip(self.class_info, self.class_ids)
        }
        self.image_from_source_map = {
            f"{info['source']}.{info['id']}": internal_id for info, internal_id in zip(self.image_info, self._image_ids)
        }

        # Sources come from classes and images alike; the background class has source "".
        sources = {c["source"] for c in self.class_info if c["source"]}
        sources.update(i["source"] for i in self.image_info)
        self.sources = sorted(sources)
        self.source_class_ids = {}
        for source in self.sources:
            # Background (internal 0) belongs to every source so that each source's ids start at BG.
            self.source_class_ids[source] = [
                int(i) for i, info in enumerate(self.class_info) if i == 0 or info["source"] == source
            ]
        self._prepared = True

    def _check_prepared(self) -> None:
        if not self._prepared:
            raise RuntimeError(
                f"{type(self).__name__} is not prepared: call dataset.prepare() after adding classes and images"
            )
        if len(self.image_info) != self.num_images or len(self.class_info) != self.num_classes:
            raise RuntimeError(
                f"{type(self).__name__} changed after prepare() (now {len(self.image_info)} images, "
                f"{len(self.class_info)} classes; prepared with {self.num_images} and {self.num_classes}): "
                "call dataset.prepare() again"
            )

    @property
    def image_ids(self) -> np.ndarray:
        """Internal image ids, [num_images] int.

        Raises:
            RuntimeError: if `prepare()` was not called, or images were added after it.
        """
        self._check_prepared()
        return self._image_ids

    def map_source_class_id(self, source_class_id: str) -> int:
        """Internal class id of a ``"source.class_id"`` key, e.g. ``"coco.12"`` -> 11.

        Raises:
            KeyError: naming the key when no such class was added.
        """
        self._check_prepared()
        try:
            return self.class_from_source_map[source_class_id]
        except KeyError:
            raise KeyError(
                f"unknown source class {source_class_id!r}; expected 'source.id', e.g. "
                f"{next(iter(self.class_from_source_map))!r}"
            ) from None

    def get_source_class_id(self, class_id: int, source: str) -> Any:
        """The id in `source` of internal class `class_id`.

        Raises:
            ValueError: if the class does not exist or does not come from `source`.
        """
        if not 0 <= class_id < len(self.class_info):
            raise ValueError(f"internal class {class_id} does not exist: the dataset has {len(self.class_info)} "
                             f"classes (0..{len(self.class_info) - 1}, background included)")
        info = self.class_info[class_id]
        if info["source"] != source:
            raise ValueError(
                f"internal class {class_id} ({info['name']!r}) comes from source {info['source']!r}, not {source!r}"
            )
        return info["id"]

    def source_image_link(self, image_id: int) -> str | None:
        """Path or URL of an image (as given to `add_image`)."""
        return self.image_info[image_id]["path"]

    # ------------------------------------------------------------------------------------------
    # Loading
    def load_image(self, image_id: int) -> np.ndarray:
        """Reads an image from `image_info[image_id]["path"]` as RGB uint8.

        Conversions (all documented choices, see also `to_rgb_uint8`):
        grayscale ([H,W] or [H,W,1]) is repeated to 3 channels; gray+alpha and RGBA lose their
        alpha channel (no compositing); 16-bit images are scaled per `UINT16_SCALING`; float
        images are taken as [0, 1] when their maximum is <= 1, else clipped to [0, 255];
        a multi-frame file (animated GIF, TIFF stack of RGB frames) gives its first frame.

        Returns:
            [H, W, 3] uint8 RGB.

        Raises:
            FileNotFoundError: naming the path when the file does not exist.
            ValueError: naming the path when the file cannot be decoded, or its shape is not an image.
        """
        path = self.image_info[image_id]["path"]
        return read_image_rgb(path, uint16_scaling=self.UINT16_SCALING)

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Instance masks of an image; subclasses override this.

        A subclass that defines only ``load_label_mask`` (non-overlapping instances as one label
        image) gets its label image expanded here (`labels_to_masks`), so evaluation, COCO export
        and the visualizers, which read ``load_mask``, see the instances training sees. Otherwise
        the base class knows no annotations: it warns and returns no instances. The empty mask
        still has the image's height and width (from ``image_info`` keys ``height``/``width`` when
        present, else by reading the image) so resizing code downstream works unchanged.

        Returns:
            masks: [H, W, N] bool, one channel per instance.
            class_ids: [N] int32 internal class ids; negative for crowd regions (COCO iscrowd),
                which training uses only to exclude anchors/RoIs, never as positives.

        Raises:
            ValueError: from the label-image expansion, naming the image (`check_label_image`).
        """
        load_label_mask = getattr(self, "load_label_mask", None)
        if load_label_mask is not None:
            labels, class_ids = load_label_mask(image_id)
            labels = np.asarray(labels)
            class_ids = np.asarray(class_ids, dtype=np.int32).reshape(-1)
            check_label_image(labels, len(class_ids), f"image {image_id} ({self.image_reference(image_id)})")
            return labels_to_masks(labels, len(class_ids)), class_ids
        warnings.warn(
            f"{type(self).__name__}.load_mask is not overridden: returning no instances for image {image_id}",
            stacklevel=utils.user_stacklevel(),
        )
        info = self.image_info[image_id]
        if "height" in info and "width" in info:
            height, width = int(info["height"]), int(info["width"])
        else:
            height, width = self.load_image(image_id).shape[:2]
        return np.zeros([height, width, 0], dtype=bool), np.zeros([0], dtype=np.int32)

    def load_keypoints(self, image_id: int) -> np.ndarray:
        """Keypoints of an image's instances, for Keypoint R-CNN (Config.KEYPOINT_HEAD); subclasses override.

        Called only when the config has a keypoint head. Instance i's keypoints belong to mask i of
        `load_mask` (same order and count). An instance without keypoint annotations (another class,
        a crowd region) has all visibilities 0.

        Returns:
            [N, K, 3] float32 (x, y, visibility) in continuous pixel coordinates of the original
            image (pixel (r, c) covers [c, c+1) x [r, r+1)); visibility 0 = not labelled, 1 =
            labelled but occluded, 2 = visible (COCO). See mrcnn/data/keypoints.py.

        Raises:
            NotImplementedError: the base class has no keypoints. Keypoint training
                (Config.KEYPOINT_HEAD) and keypoint evaluation (dataset_to_coco(with_keypoints=True))
                both call this; the message names the subclass, the image and how to avoid each call.
        """
        raise NotImplementedError(
            f"{type(self).__name__}.load_keypoints is not implemented (needed for image {image_id} by keypoint "
            "training, Config.KEYPOINT_HEAD = True, or keypoint evaluation, dataset_to_coco(with_keypoints=True)): "
            "override load_keypoints(image_id) -> [N, K, 3] (x, y, visibility), or set KEYPOINT_HEAD = False / "
            "with_keypoints=False"
        )


# ----------------------------------------------------------------------------------------------
def read_image_rgb(path: str | Path, uint16_scaling: str = "range") -> np.ndarray:
    """Reads an image file or URL with skimage.io.imread and converts it with `to_rgb_uint8`.

    Raises:
        FileNotFoundError: naming the path when a local file does not exist.
        ValueError: naming the path when the file cannot be decoded or is not an image.
    """
    if path is None:
        raise ValueError("image has no path: add_image(..., path=None) needs a subclass that overrides load_image")
    path_str = str(path)
    is_url = "://" in path_str
    if not is_url and not Path(path_str).is_file():
        raise FileNotFoundError(f"image file not found: {path_str}")
    try:
        image = skimage.io.imread(path_str)
    except PermissionError:
        raise
    except (OSError, ValueError, SyntaxError, RuntimeError, IndexError, KeyError) as error:
        # Decoders (PIL, imageio, tifffile) signal a bad file with many exception types; one
        # ValueError naming the file is what the caller can act on.
        raise ValueError(f"cannot decode image file {path_str}: {error}") from error
    try:
        return to_rgb_uint8(image, uint16_scaling=uint16_scaling, where=f"image file {path_str}")
    except ValueError as error:
        raise ValueError(f"image file {path_str}: {error}") from error


def check_label_image(labels: np.ndarray, count: int, where: str) -> None:
    """Raises ValueError, naming `where`, unless `labels` is an [H, W] integer label image whose
    values lie in 0..count (0 background, value k instance k, `count` class ids).

    A label image numbered with gaps (e.g. 125 nuclei with values up to 183, as segmentation tools
    write them after removing objects) would otherwise lose every instance above `count` silently.
    """
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: load_label_mask gave labels {labels.shape} {labels.dtype}; expected [H, W] integer")
    if labels.size == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > count:
        raise ValueError(
            f"{where}: load_label_mask gave label values {low}..{high} but {count} class ids; instance k must "
            "have value k (1..N) and class_ids[k - 1] (renumber the labels with "
            "skimage.segmentation.relabel_sequential, or give one class id per value up to the largest)"
        )


def labels_to_masks(labels: np.ndarray, count: int | None = None) -> np.ndarray:
    """Expands a label image to instance masks, touching each instance only inside its box.

    Args:
        labels: [H, W] integer, 0 background, instances 1..N (a value with no pixel gives an
            empty mask channel).
        count: N, the number of channels; None: ``labels.max()``. Larger values are left out.

    Returns:
        [H, W, N] bool; channel k-1 is ``labels == k``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {labels.shape}")
    if count is None:
        count = int(labels.max()) if labels.size else 0
    masks = np.zeros(labels.shape + (count,), dtype=bool)
    # find_objects: one C pass giving every label's bounding slices (None for absent values).
    for index, slices in enumerate(ndi.find_objects(labels, max_label=count) if count else []):
        if slices is not None:
            masks[slices + (index,)] = labels[slices] == index + 1
    return masks


def check_num_classes(dataset: Any, config: Any) -> None:
    """Raises ValueError unless the dataset's class count (background included) is config.NUM_CLASSES.

    The model has NUM_CLASSES outputs and the image meta one active-class flag per dataset class:
    a model trained on another class count returns ids the dataset cannot map back.
    """
    if dataset.num_classes != config.NUM_CLASSES:
        raise ValueError(f"dataset has {dataset.num_classes} classes (background included) but "
                         f"config.NUM_CLASSES is {config.NUM_CLASSES}: they must match")


def conform_channels(image: np.ndarray, channels: int, where: str = "image") -> np.ndarray:
    """An image with the config's channel count, as `detect` and training take it.

    With ``channels == 3``: [H, W] and [H, W, 1] grayscale are repeated to 3 channels and RGBA
    loses its alpha (as `Dataset.load_image` does); [H, W] becomes [H, W, 1] otherwise. Values and
    dtype are left alone.

    Args:
        image: [H, W] or [H, W, C] array.
        channels: config.IMAGE_CHANNEL_COUNT.
        where: how error messages name the image, e.g. "image 3 (path/to/file.png)".

    Returns:
        [H, W, channels] (a view when nothing had to be repeated).

    Raises:
        ValueError: naming `where`, for another rank or a channel count that cannot be conformed.
    """
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    if image.ndim != 3:
        raise ValueError(f"{where} must be [H,W] or [H,W,C], got shape {image.shape}")
    if channels == 3 and image.shape[-1] == 4:
        image = image[:, :, :3]
    elif channels == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.shape[-1] != channels:
        raise ValueError(f"{where} has {image.shape[-1]} channels, the config expects {channels} "
                         "(IMAGE_CHANNEL_COUNT)")
    return image


def to_rgb_uint8(image: np.ndarray, uint16_scaling: str = "range", where: str = "image") -> np.ndarray:
    """Converts an image array to [H, W, 3] uint8 RGB.

    Args:
        image: [H, W], [H, W, 1|2|3|4] or [F, H, W, 1|3|4] (frames; the first is used), of
            bool, uint8, uint16, other integer or float dtype.
        uint16_scaling: ``"range"``: divide by 257 (0..65535 -> 0..255). ``"image_max"``: divide
            by the image's maximum so that it becomes 255 (an all-zero image stays zero).
            Other integer types wider than 8 bits are treated the same way after clipping to
            [0, 65535], unless all their values already lie in [0, 255] (then kept as is).
        where: how the warning names the image (`read_image_rgb` passes the file).

    Returns:
        [H, W, 3] uint8.

    Raises:
        ValueError: naming the shape or dtype that cannot be converted.

    Warns:
        UserWarning: naming `where` when "range" scaling leaves a 16-bit image at most
            LOW_RANGE_GREY_LEVELS grey levels (values below 4096, e.g. 12-bit microscopy: nearly
            black after dividing by 257); "image_max" is then the scaling to use.
    """
    if uint16_scaling not in UINT16_SCALINGS:
        raise ValueError(f"uint16_scaling must be one of {UINT16_SCALINGS}, got {uint16_scaling!r}")
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[-1] in (1, 3, 4):
        image = image[0]
    if image.ndim == 2:
        image = image[..., np.newaxis]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(
            f"unsupported image shape {image.shape}: expected [H, W] or [H, W, C] with C in 1..4"
        )
    # Drop alpha (gray+alpha -> gray, RGBA -> RGB); then grayscale -> 3 channels.
    if image.shape[-1] == 2:
        image = image[..., :1]
    elif image.shape[-1] == 4:
        image = image[..., :3]
    if uint16_scaling == "range" and image.dtype == np.uint16 and image.size:
        _warn_low_range(int(image.max()), where)
    image = _to_uint8(image, uint16_scaling)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image)


def _warn_low_range(peak: int, where: str) -> None:
    """Warns when dividing a 16-bit image of maximum `peak` by 257 leaves few grey levels."""
    levels = int(np.rint(peak / 257.0)) + 1
    if peak > 0 and levels <= LOW_RANGE_GREY_LEVELS:
        warnings.warn(f"{where}: 16-bit values only up to {peak} keep {levels} of 256 grey levels under "
                      "UINT16_SCALING 'range' (65535 -> 255), the image comes out nearly black; set "
                      "UINT16_SCALING = 'image_max' on the Dataset (to_rgb_uint8/read_image_rgb: "
                      "uint16_scaling='image_max') for 12-bit and other low-range data",
                      stacklevel=utils.user_stacklevel())


def _to_uint8(image: np.ndarray, uint16_scaling: str) -> np.ndarray:
    dtype = image.dtype
    if dtype == np.uint8:
        return image
    if dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if np.issubdtype(dtype, np.floating):
        values = np.nan_to_num(image.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if np.issubdtype(dtype, np.integer):
        if dtype != np.uint16 and image.size and image.min() >= 0 and image.max() <= 255:
            # e.g. int32 PNGs (PIL mode "I") holding 8-bit data: keep values unchanged.
            return image.astype(np.uint8)
        values = np.clip(image.astype(np.float64), 0, 65535)
        if uint16_scaling == "range":
            scale = 255.0 / 65535.0
        else:
            peak = values.max() if values.size else 0.0
            scale = 255.0 / peak if peak > 0 else 0.0
        return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {dtype}")

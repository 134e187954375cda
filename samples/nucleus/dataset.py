"""Nucleus instance data: the DSB2018 Kaggle layout and instance label images.

Two on-disk layouts are read:

* **Kaggle / DSB2018**: ``<root>/<id>/images/<id>.png`` (RGBA or gray, uint8) and one binary PNG
  per nucleus in ``<root>/<id>/masks/``.
* **Label images**: an intensity image (PNG/TIFF, uint8 or uint16) plus one integer image of the
  same size in which each nucleus has its own value and 0 is background (e.g. stardist's
  ``img2d.tif`` / ``mask2d.tif``).

Internally every image's instances are held as ONE label image ``[H, W]`` (uint16, 0 background,
instance k has value k, k = 1..N): nuclei do not overlap, so this loses nothing but the few pixels
that two DSB2018 masks claim at once (2 pixels in 4 of the 544 stage-1 images; the instance listed
first keeps them). `load_mask` expands it to the ``[H, W, N]`` bool stack of the Dataset contract,
writing each instance only inside its own box.

Speed: decoding one PNG per nucleus (up to 375 per image) dominates reading DSB2018. With
``cache_dir`` set, the first read of an image writes ``<cache_dir>/<id>.<stamp>.npy`` (RGB image
and label image packed in one uncompressed array) and later reads load that one
file. ``<stamp>`` hashes the source files' modification times, so a changed image or mask folder
gets a fresh cache file. Never put it inside the (read-only)
shared data folder.

Train/val split (fixed, documented, independent of the number of images): an image id is in
``"val"`` when ``int(sha1(id).hexdigest(), 16) % 5 == 0`` (about 20%: 104 of the 544 DSB2018
stage-1 images), otherwise in ``"train"``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mrcnn.data.dataset import Dataset, labels_to_masks, read_image_rgb, to_rgb_uint8

SOURCE = "nucleus"
SUBSETS = ("train", "val", "all")
VAL_MODULUS = 5  # 1 in VAL_MODULUS image ids (by SHA-1) is a validation image
_CACHE_VERSION = 1


def split_of(image_id: str) -> str:
    """The fixed subset of an image id: ``"val"`` or ``"train"`` (see module docstring)."""
    digest = int(hashlib.sha1(str(image_id).encode("utf-8")).hexdigest(), 16)
    return "val" if digest % VAL_MODULUS == 0 else "train"


class NucleusDataset(Dataset):
    """Nuclei (one class, ``"nucleus"``) from the Kaggle layout or from label images.

    Args:
        cache_dir: optional folder for the per-image ``.npy`` cache (created when missing);
            None reads the source files every time.

    Usage:
        dataset = NucleusDataset(cache_dir="~/.cache/mrcnn/dsb2018")
        dataset.load_kaggle("../shared/data/dsb2018/stage1_train", subset="train")
        dataset.load_label_image("img2d.tif", "mask2d.tif")
        dataset.prepare()
        image = dataset.load_image(0)            # [H, W, 3] uint8
        labels = dataset.load_labels(0)          # [H, W] uint16, 0 background
        masks, class_ids = dataset.load_mask(0)  # [H, W, N] bool, [N] int32 (all 1)
    """

    # 12/16-bit fluorescence uses a small part of the uint16 range: stretch each image to 8 bits.
    UINT16_SCALING = "image_max"

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        super().__init__()
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.add_class(SOURCE, 1, "nucleus")
        self._last: tuple[int, np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------------------------------
    # Registration
    def load_kaggle(self, root: str | Path, subset: str = "all", limit: int | None = None,
                    image_ids: list[str] | None = None) -> int:
        """Adds the images of a Kaggle/DSB2018 folder.

        Args:
            root: folder holding one ``<id>/`` folder per image (e.g. ``dsb2018/stage1_train``).
            subset: ``"train"``, ``"val"`` (the fixed split of `split_of`) or ``"all"``.
            limit: keep only the first `limit` images of the subset (sorted by id).
            image_ids: keep only these ids (after the subset filter).

        Returns:
            The number of images added.

        Raises:
            ValueError: for an unknown subset.
            FileNotFoundError: naming `root` when it is not a folder, or an image folder without
                its ``images/<id>.png``.
        """
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"Kaggle/DSB2018 folder not found: {root}")
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        if subset != "all":
            folders = [p for p in folders if split_of(p.name) == subset]
        if image_ids is not None:
            wanted = set(image_ids)
            folders = [p for p in folders if p.name in wanted]
        if limit is not None:
            folders = folders[:limit]
        for folder in folders:
            image_path = folder / "images" / f"{folder.name}.png"
            if not image_path.is_file():
                raise FileNotFoundError(f"image file not found: {image_path} (Kaggle layout <id>/images/<id>.png)")
            self.add_image(SOURCE, image_id=folder.name, path=image_path, mask_dir=folder / "masks",
                           kind="kaggle")
        return len(folders)

    def load_label_image(self, image_path: str | Path, label_path: str | Path, image_id: str | None = None) -> None:
        """Adds one image whose instances are given as an integer label image.

        Args:
            image_path: intensity image (PNG, TIFF, ...; uint8 or uint16, gray or RGB).
            label_path: integer image of the same height and width; 0 is background and each
                other value one instance (values need not be consecutive).
            image_id: id in the ``"nucleus"`` source; default the image file's stem.

        Raises:
            FileNotFoundError: naming whichever file is missing.
        """
        for path in (image_path, label_path):
            if not Path(path).is_file():
                raise FileNotFoundError(f"file not found: {path}")
        self.add_image(SOURCE, image_id=image_id or Path(image_path).stem, path=Path(image_path),
                       label_path=Path(label_path), kind="labels")

    # ------------------------------------------------------------------------------------------
    # Loading
    def load_image(self, image_id: int) -> np.ndarray:
        """[H, W, 3] uint8 RGB (alpha dropped, gray repeated, uint16 stretched per image)."""
        return self._load(image_id)[0]

    def load_labels(self, image_id: int) -> np.ndarray:
        """[H, W] uint16 instance label image: 0 background, instances 1..N in file order."""
        return self._load(image_id)[1]

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """[H, W, N] bool instance masks and [N] int32 class ids (all 1), from the label image."""
        masks = labels_to_masks(self.load_labels(image_id))
        return masks, np.ones(masks.shape[-1], dtype=np.int32)

    def load_label_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The label image and [N] int32 class ids (all 1): `mrcnn.data.targets.load_image_gt`
        uses this instead of `load_mask` and never builds the [H, W, N] stack (3x faster)."""
        labels = self.load_labels(image_id)
        return labels, np.ones(int(labels.max()) if labels.size else 0, dtype=np.int32)

    def image_reference(self, image_id: int) -> str:
        info = self.image_info[image_id]
        return f"{info['id']} ({info['path']})"

    def _load(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        # load_image and load_label_mask of one image follow each other in load_image_gt: keep the
        # last image so the files are read once (a tuple swap is atomic for worker threads).
        last = self._last
        if last is not None and last[0] == image_id:
            return last[1], last[2]
        image, labels = self._read(image_id)
        # Shared between calls (and views of one cache buffer): read-only, so that an in-place
        # edit by a caller fails loudly instead of changing what the next call returns.
        image.setflags(write=False)
        labels.setflags(write=False)
        self._last = (image_id, image, labels)
        return image, labels

    def _read(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.image_info[image_id]
        cache_path = None
        if self.cache_dir is not None:
            cache_path = _cache_path(self.cache_dir, info)
            cached = _read_cache(cache_path)
            if cached is not None:
                return cached
        if info["kind"] == "kaggle":
            image = read_png_rgb(info["path"], uint16_scaling=self.UINT16_SCALING)
            labels = read_kaggle_labels(info["mask_dir"], image.shape[:2])
        else:
            image = read_image_rgb(info["path"], uint16_scaling=self.UINT16_SCALING)
            labels = read_label_image(info["label_path"])
            if labels.shape != image.shape[:2]:
                raise ValueError(
                    f"label image {info['label_path']} is {labels.shape} but image {info['path']} is "
                    f"{image.shape[:2]}: they must have the same height and width"
                )
        if cache_path is not None:
            _write_cache(cache_path, image, labels)
        return image, labels


# ----------------------------------------------------------------------------------------------
# Decoding
def read_png_rgb(path: str | Path, uint16_scaling: str = "range") -> np.ndarray:
    """Reads a PNG with PIL (a few times faster than skimage.io for small files) as RGB uint8.

    16-bit images are mapped to 8 bits by `uint16_scaling` (`to_rgb_uint8`; NucleusDataset passes
    its UINT16_SCALING, as `read_image_rgb` does for the other layouts).

    Raises:
        FileNotFoundError / ValueError: naming the file when it is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            array = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot decode image file {path}: {error}") from error
    return to_rgb_uint8(array, uint16_scaling=uint16_scaling)


def read_kaggle_labels(mask_dir: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Builds one label image from a folder of binary instance PNGs (Kaggle layout).

    Each PNG is decoded with PIL; only its bounding box (PIL's ``getbbox``, in C) is converted to
    numpy, so the cost per nucleus is the decode plus its own box, not the whole image.

    Args:
        mask_dir: folder of ``*.png`` masks, one nucleus each (nonzero = nucleus).
        shape: (H, W) of the image; every mask must have it.

    Returns:
        [H, W] uint16 labels; instance k (1-based, masks sorted by file name) has value k.
        A pixel claimed by two masks keeps the first one's value. Empty mask files are skipped.

    Raises:
        FileNotFoundError: naming `mask_dir` when missing.
        ValueError: naming a mask file of the wrong size or that cannot be decoded, or when more
            than 65535 masks exist.
    """
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"mask folder not found: {mask_dir}")
    files = sorted(name for name in os.listdir(mask_dir) if name.lower().endswith(".png"))
    if len(files) > np.iinfo(np.uint16).max:
        raise ValueError(f"{mask_dir} holds {len(files)} masks: more than a uint16 label image can number")
    labels = np.zeros(shape, dtype=np.uint16)
    value = 0
    for name in files:
        path = mask_dir / name
        try:
            with Image.open(path) as mask:
                if (mask.height, mask.width) != tuple(shape):
                    raise ValueError(f"mask {path} is {mask.height}x{mask.width}, the image is {shape[0]}x{shape[1]}")
                if mask.mode not in ("1", "L", "P", "I", "I;16"):
                    mask = mask.convert("L")
                box = mask.getbbox()
                if box is None:
                    continue
                crop = np.asarray(mask.crop(box)) > 0
        except (OSError, SyntaxError) as error:
            raise ValueError(f"cannot decode mask file {path}: {error}") from error
        value += 1
        x1, y1, x2, y2 = box
        window = labels[y1:y2, x1:x2]
        window[crop & (window == 0)] = value
    return labels


def read_label_image(path: str | Path) -> np.ndarray:
    """Reads an integer instance label image (TIFF via tifffile, else PIL) and numbers its
    instances 1..N in order of their original values.

    Raises:
        ValueError: naming the file when it is not a 2-D integer image or has > 65535 instances.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            raw = tifffile.imread(path)
        else:
            with Image.open(path) as image:
                raw = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot decode label image {path}: {error}") from error
    raw = np.squeeze(raw)
    if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(f"label image {path} must be a 2-D integer image, got shape {raw.shape} dtype {raw.dtype}")
    values, inverse = np.unique(raw, return_inverse=True)
    # Background 0 stays 0; the other values become 1..N in increasing order.
    new_values = np.arange(values.size) + (0 if values[0] == 0 else 1)
    if new_values[-1] > np.iinfo(np.uint16).max:
        raise ValueError(f"label image {path} has {values.size} instances: more than uint16 can number")
    return new_values[inverse.reshape(raw.shape)].astype(np.uint16)


def masks_to_labels(masks: np.ndarray) -> np.ndarray:
    """[H, W, N] bool masks -> [H, W] int32 label image (instance k-1 -> value k; the first
    instance keeps a pixel that several masks claim)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [H, W, N], got shape {masks.shape}")
    labels = np.zeros(masks.shape[:2], dtype=np.int32)
    for k in range(masks.shape[-1] - 1, -1, -1):  # backwards: earlier instances overwrite later ones
        labels[masks[:, :, k]] = k + 1
    return labels


# ----------------------------------------------------------------------------------------------
# Cache
def _safe_name(image_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in image_id)


def _source_signature(info: dict[str, Any]) -> str:
    # Modification times of the files the label image is built from (a folder's mtime changes
    # when a mask file is added or removed), hashed into the cache file's name.
    paths = [info["path"], info["mask_dir"] if info["kind"] == "kaggle" else info["label_path"]]
    stamp = f"{_CACHE_VERSION}:" + ":".join(str(os.stat(p).st_mtime_ns) for p in paths)
    return hashlib.sha1(stamp.encode("ascii")).hexdigest()[:12]


def _cache_path(cache_dir: Path, info: dict[str, Any]) -> Path:
    return cache_dir / f"{_safe_name(str(info['id']))}.{_source_signature(info)}.npy"


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    # One flat uint8 .npy: height and width (2 x uint32), the RGB bytes, then the uint16 labels;
    # image and labels come back as views of it, without copies. Plain .npy rather than .npz:
    # zipfile's CRC check alone cost ~1 ms per image.
    if not path.is_file():
        return None
    try:
        packed = np.load(path)
        height, width = (int(v) for v in packed[:8].view("<u4"))
        size = height * width
        if packed.ndim != 1 or packed.dtype != np.uint8 or packed.size != 8 + 5 * size:
            raise ValueError(f"unexpected contents (shape {packed.shape}, dtype {packed.dtype})")
    except (OSError, ValueError) as error:
        warnings.warn(f"ignoring unreadable cache file {path}: {error}", stacklevel=3)
        return None
    image = packed[8 : 8 + 3 * size].reshape(height, width, 3)
    labels = packed[8 + 3 * size :].view("<u2").reshape(height, width)
    return image, labels


def _write_cache(path: Path, image: np.ndarray, labels: np.ndarray) -> None:
    header = np.array(labels.shape, dtype="<u4").view(np.uint8)
    packed = np.concatenate([header, np.ascontiguousarray(image, dtype=np.uint8).reshape(-1),
                             np.ascontiguousarray(labels, dtype="<u2").reshape(-1).view(np.uint8)])
    # Write then rename: a reader (another worker) never sees a half-written file.
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, packed)
    os.replace(tmp, path)

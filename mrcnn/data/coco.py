"""COCO-format instance data as a `Dataset`: polygons, RLE (compressed and uncompressed), crowd.

Two ways in:

    # Standard COCO layout: <dir>/annotations/instances_val2017.json + <dir>/val2017/*.jpg
    dataset = CocoDataset()
    coco = dataset.load_coco("/data/coco", "val", year="2017", return_coco=True)
    dataset.prepare()

    # Any COCO-format JSON + image folder (e.g. `mrcnn.data.shapes.export_coco` output)
    dataset = CocoDataset()
    dataset.load_coco_json("export/annotations.json", "export/images", source="coco")
    dataset.prepare()

Ids: classes are registered as ``(source, COCO category id)``, images as ``(source, COCO image
id)``. After `prepare()`, ``dataset.map_source_class_id("coco.18")`` gives the internal class id of
COCO category 18 and ``dataset.get_source_class_id(internal_id, "coco")`` goes back;
``dataset.image_info[i]["id"]`` is the COCO image id of internal image ``i``.

Masks: `load_mask` decodes each annotation at the image's full size. Crowd annotations
(``iscrowd=1``) come back with NEGATIVE class ids (as in matterport), so training targets can
exclude them; annotations that decode to no pixel at all are skipped.

Keypoints (person keypoints files, `load_keypoints`): COCO stores integer pixel indices; they come
back in continuous pixel coordinates (+0.5, the pixel's centre; mrcnn/data/keypoints.py), one row
per instance of `load_mask`. `COCO_PERSON_KEYPOINT_NAMES`, `COCO_PERSON_SKELETON`,
`COCO_PERSON_FLIP_MAP` and `COCO_PERSON_OKS_SIGMAS` configure a person Keypoint R-CNN.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO

from mrcnn import utils
from mrcnn.data.dataset import Dataset
from mrcnn.data.keypoints import flip_map_from_names

COCO_DOWNLOAD_PAGE = "https://cocodataset.org/#download"
COCO_IMAGES_URL = "http://images.cocodataset.org/zips/{subset}{year}.zip"
COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval{year}.zip"
# matterport's 2014 splits: val2014 minus 5k "minival" images; both read their images from val2014.
_VAL_SUBSETS = ("minival", "valminusminival")

# COCO person keypoints (person_keypoints_*.json categories): names, limbs as 0-based index pairs
# (the file's skeleton is 1-based), mirror partners, and COCOeval's per-keypoint OKS sigmas.
COCO_PERSON_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
COCO_PERSON_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)
COCO_PERSON_FLIP_MAP = flip_map_from_names(COCO_PERSON_KEYPOINT_NAMES)
COCO_PERSON_OKS_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
    0.087, 0.087, 0.089, 0.089,
)


ANNOTATION_KINDS = ("instances", "person_keypoints")


def coco_paths(dataset_dir: str | Path, subset: str, year: str = "2017", kind: str = "instances"
               ) -> tuple[Path, Path]:
    """Annotation file and image folder of a subset in the standard COCO layout.

    Args:
        kind: "instances" (80 categories, masks) or "person_keypoints" (persons with masks and
            17 keypoints).

    Returns:
        (``<dir>/annotations/<kind>_<subset><year>.json``, ``<dir>/<subset><year>``); the image
        folder of "minival" and "valminusminival" is ``<dir>/val<year>``.
    """
    if kind not in ANNOTATION_KINDS:
        raise ValueError(f"kind must be one of {ANNOTATION_KINDS}, got {kind!r}")
    root = Path(dataset_dir)
    image_subset = "val" if subset in _VAL_SUBSETS else subset
    return root / "annotations" / f"{kind}_{subset}{year}.json", root / f"{image_subset}{year}"


class CocoDataset(Dataset):
    """Images and instance masks from COCO-format annotations.

    Each image added by `load_coco` / `load_coco_json` carries in ``image_info``: ``id`` (COCO
    image id), ``path``, ``width``, ``height``, ``file_name``, ``coco_url`` (may be None),
    ``annotations`` (the COCO annotation dicts of the selected categories) and ``coco_file``
    (the JSON it came from, for error messages).

    Attributes:
        keypoint_names: names of the keypoints of the file's keypoint category (COCO person: 17),
            None when no loaded category has keypoints.
        skeleton: that category's limbs as 0-based keypoint index pairs.
    """

    keypoint_names: tuple[str, ...] | None = None
    # (image id, indices of its annotations with a mask) from the last load_mask: load_keypoints,
    # which load_image_gt calls right after, keeps the same rows without decoding every mask again.
    _masked_annotations: tuple[int, list[int]] | None = None
    skeleton: tuple[tuple[int, int], ...] = ()

    def load_coco(
        self,
        dataset_dir: str | Path,
        subset: str,
        year: str = "2017",
        class_ids: Sequence[int] | None = None,
        class_map: dict | None = None,
        return_coco: bool = False,
        auto_download: bool = False,
        kind: str = "instances",
    ) -> COCO | None:
        """Adds a subset of the COCO dataset in its standard layout (source "coco").

        Args:
            dataset_dir: folder holding ``annotations/`` and ``<subset><year>/``.
            subset: "train", "val" (or matterport's 2014 "minival" / "valminusminival").
            year: "2014" or "2017".
            class_ids: COCO category ids to load (default: all). With a subset of categories,
                only images holding at least one of them are added.
            class_map: accepted for compatibility with matterport; unused.
            return_coco: also return the pycocotools COCO object (needed by `evaluate_coco`).
            auto_download: fetch missing files with `download_coco` first.
            kind: "instances" or "person_keypoints" (`coco_paths`): the annotation file read.

        Returns:
            The COCO object if `return_coco`, else None.

        Raises:
            FileNotFoundError: naming the annotation file or image folder that is missing.
        """
        del class_map  # matterport accepts and ignores it too
        if auto_download:
            download_coco(dataset_dir, subset, year)
        json_path, image_dir = coco_paths(dataset_dir, subset, year, kind=kind)
        return self.load_coco_json(json_path, image_dir, class_ids=class_ids, return_coco=return_coco, source="coco")

    def load_coco_json(
        self,
        json_path: str | Path,
        image_dir: str | Path,
        class_ids: Sequence[int] | None = None,
        return_coco: bool = False,
        source: str = "coco",
    ) -> COCO | None:
        """Adds the images and categories of any COCO-format annotation file.

        Args:
            json_path: COCO instances JSON (``images``, ``categories``, ``annotations``).
            image_dir: folder the images' ``file_name`` entries are relative to.
            class_ids: COCO category ids to load (default: all categories of the file). With a
                subset, only images holding at least one of these categories are added and
                annotations of other categories are left out.
            return_coco: also return the pycocotools COCO object.
            source: source name for the classes and images (no "."); use different names to
                combine files whose ids mean different things.

        Returns:
            The COCO object if `return_coco`, else None.

        Raises:
            FileNotFoundError: naming the annotation file or image folder that is missing, or
                (with a count and examples) image files that are not in `image_dir`.
            ValueError: naming the file when it is not COCO-format JSON, or the class ids that
                it does not define, or a category without a name.

        Warns:
            UserWarning: for annotations whose image id no image has, and for annotations with an
                empty or missing segmentation or only polygons of fewer than 3 points (both are
                left out).
        """
        json_path, image_dir = Path(json_path), Path(image_dir)
        if not json_path.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {json_path}")
        if not image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {image_dir}")
        coco = _read_coco(json_path)

        all_class_ids = sorted(coco.getCatIds())
        if class_ids is None:
            class_ids = all_class_ids
            # No category filter on annotations: one with an undeclared category then fails
            # loudly in load_mask instead of vanishing here.
            ann_filter: list[int] = []
            # Every image, including those without any annotation (pure negatives).
            image_ids = sorted(coco.imgs)
        else:
            class_ids = sorted({int(c) for c in class_ids})
            unknown = sorted(set(class_ids) - set(all_class_ids))
            if not class_ids or unknown:
                raise ValueError(
                    f"class_ids {unknown or '[] (empty)'} not among the categories of {json_path}: "
                    f"{all_class_ids} (pass class_ids=None for all)"
                )
            ann_filter = class_ids
            image_ids = sorted({i for c in class_ids for i in coco.getImgIds(catIds=[c])})

        for class_id in class_ids:
            category = coco.loadCats(class_id)[0]
            if "name" not in category:
                raise ValueError(f"category {class_id} in {json_path} has no 'name'")
            self.add_class(source, class_id, category["name"])
            if category.get("keypoints") and self.keypoint_names is None:
                # The first category with keypoints (COCO: person) defines the keypoint types.
                self.keypoint_names = tuple(category["keypoints"])
                self.skeleton = tuple((int(a) - 1, int(b) - 1) for a, b in category.get("skeleton", []))
        orphans = [a["image_id"] for a in coco.anns.values() if a["image_id"] not in coco.imgs]
        if orphans:
            # pycocotools indexes them under ids no image has: they would vanish without a word.
            warnings.warn(f"{json_path}: {len(orphans)} annotations refer to image ids that no image has "
                          f"(e.g. {sorted(set(orphans), key=str)[:5]}); they are left out. Image ids must match 'images' entries "
                          "exactly (same numbers, not strings)", stacklevel=utils.user_stacklevel())
        loaded = [a for a in coco.anns.values() if a["image_id"] in coco.imgs
                  and (not ann_filter or a.get("category_id") in ann_filter)]
        degenerate = [a.get("id") for a in loaded if _has_no_polygon_area(a.get("segmentation"))]
        if degenerate:
            # load_mask skips them (no pixel); say so once here rather than never.
            warnings.warn(f"{json_path}: {len(degenerate)} of {len(loaded)} annotations have an empty or missing "
                          f"segmentation or only polygons of fewer than 3 points (no mask; e.g. ids {degenerate[:5]}); they are left out",
                          stacklevel=utils.user_stacklevel())
        missing = [coco.imgs[i].get("file_name") for i in image_ids
                   if "file_name" in coco.imgs[i] and not (image_dir / coco.imgs[i]["file_name"]).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of the {len(image_ids)} images of {json_path} are not in "
                                    f"{image_dir}, e.g. {missing[:3]}")
        for image_id in image_ids:
            info = coco.imgs[image_id]
            if "file_name" not in info:
                raise ValueError(f"image {image_id} in {json_path} has no 'file_name'")
            self.add_image(
                source,
                image_id=image_id,
                path=image_dir / info["file_name"],
                width=info.get("width"),
                height=info.get("height"),
                file_name=info["file_name"],
                coco_url=info.get("coco_url"),
                annotations=coco.loadAnns(coco.getAnnIds(imgIds=[image_id], catIds=ann_filter, iscrowd=None)),
                coco_file=str(json_path),
            )
        return coco if return_coco else None

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Instance masks of an image, decoded from its COCO annotations at full image size.

        Annotations whose mask has no pixel (degenerate polygons, empty RLE) are skipped.

        Returns:
            masks: [H, W, N] bool.
            class_ids: [N] int32 internal class ids, negative for crowd annotations (iscrowd=1).
            An image without annotations gives [H, W, 0] and [0].

        Raises:
            RuntimeError: if `prepare()` was not called (category ids map to internal ids then).
            ValueError: naming the image and annotation ids when a segmentation is malformed,
                decodes to a mask of another size than the image, or has an unknown category.
        """
        info = self.image_info[image_id]
        if "coco_file" not in info:
            return super().load_mask(image_id)
        self._check_prepared()  # internal class ids exist only after prepare()
        height, width = self._image_size(image_id)

        masks, class_ids, kept = [], [], []
        for index, ann in enumerate(info["annotations"]):
            where = _annotation_where(info, ann)
            mask = decode_segmentation(ann.get("segmentation"), height, width, where)
            if not mask.any():
                continue
            key = f"{info['source']}.{ann['category_id']}"
            if key not in self.class_from_source_map:
                raise ValueError(f"{where}: category {ann['category_id']} is not a loaded class")
            class_id = int(self.map_source_class_id(key))
            masks.append(mask)
            class_ids.append(-class_id if ann.get("iscrowd", 0) else class_id)
            kept.append(index)
        self._masked_annotations = (image_id, kept)  # one assignment: safe for the loader's threads
        if not masks:
            return np.zeros((height, width, 0), dtype=bool), np.zeros((0,), dtype=np.int32)
        return np.stack(masks, axis=-1), np.array(class_ids, dtype=np.int32)

    def load_keypoints(self, image_id: int) -> np.ndarray:
        """Keypoints of the instances `load_mask` returns (same order: annotations with a non-empty mask).

        Returns:
            [N, K, 3] float32 (x, y, visibility) in continuous pixel coordinates (COCO's integer
            pixel indices + 0.5); K = len(keypoint_names) of the file's keypoint category. An
            annotation without keypoints (crowd, another category) gives visibility 0 throughout.

        Raises:
            ValueError: naming the file when it defines no keypoint category, or the annotation
                whose keypoint list does not have 3 * K numbers.
        """
        info = self.image_info[image_id]
        if "coco_file" not in info:
            return super().load_keypoints(image_id)
        names = self.keypoint_names
        if names is None:
            raise ValueError(f"{info['coco_file']} defines no category with 'keypoints': it is not a keypoints file")
        num_keypoints = len(names)
        # The same filter as load_mask, so that row i belongs to mask i: its last answer when it
        # was for this image, else the masks decoded again.
        cached = self._masked_annotations
        if cached is not None and cached[0] == image_id:
            kept = set(cached[1])
        else:
            height, width = self._image_size(image_id)
            kept = {index for index, ann in enumerate(info["annotations"]) if decode_segmentation(
                ann.get("segmentation"), height, width, _annotation_where(info, ann)).any()}
        rows = []
        for index, ann in enumerate(info["annotations"]):
            if index not in kept:
                continue
            where = _annotation_where(info, ann)
            values = ann.get("keypoints") or [0] * (3 * num_keypoints)
            if len(values) != 3 * num_keypoints:
                raise ValueError(f"{where}: {len(values)} keypoint values, expected 3 * {num_keypoints}")
            points = np.asarray(values, dtype=np.float32).reshape(num_keypoints, 3)
            labelled = points[:, 2] > 0
            points[labelled, :2] += 0.5  # pixel index -> pixel centre (continuous coordinates)
            rows.append(points)
        if not rows:
            return np.zeros((0, num_keypoints, 3), np.float32)
        return np.stack(rows)

    def _image_size(self, image_id: int) -> tuple[int, int]:
        """(height, width) of an image from its COCO entry, or from the image file when the entry
        leaves them out (as some COCO-style exporters do)."""
        info = self.image_info[image_id]
        height, width = info["height"], info["width"]
        if height is None or width is None:
            height, width = self.load_image(image_id).shape[:2]
        return int(height), int(width)

    def image_reference(self, image_id: int) -> str:
        """The image's COCO URL when the file gives one, else its file name."""
        info = self.image_info[image_id]
        if "coco_file" not in info:
            return super().image_reference(image_id)
        return info.get("coco_url") or info["file_name"]


# ----------------------------------------------------------------------------------------------
def _read_coco(json_path: Path) -> COCO:
    """A pycocotools COCO object for a file, with errors that name the file and pycocotools quiet."""
    try:
        with open(json_path) as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{json_path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{json_path} is not a COCO annotation file: expected an object with an 'images' list")
    data.setdefault("annotations", [])
    data.setdefault("categories", [])
    coco = COCO()
    coco.dataset = data
    # createIndex prints progress lines; they add nothing for files this package loads.
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _annotation_where(info: dict[str, Any], ann: dict[str, Any]) -> str:
    """How errors name an annotation: its id, its image and the file."""
    return f"annotation {ann.get('id')} of image {info['id']} ({info['file_name']}) in {info['coco_file']}"


def _has_no_polygon_area(segmentation: Any) -> bool:
    """Whether a segmentation is missing (None) or empty, or has only polygons of fewer than 3 points.

    Such an annotation decodes to an empty mask (`decode_segmentation`): a box-only detection
    file (``"segmentation": []``, or no "segmentation" key at all) has nothing to train masks on.
    Malformed values are not judged here: `decode_segmentation` names them when the image is loaded.
    """
    if segmentation is None:
        return True
    return isinstance(segmentation, list) and all(isinstance(p, list | tuple) and len(p) < 6 for p in segmentation)


def decode_segmentation(segmentation: Any, height: int, width: int, where: str = "segmentation") -> np.ndarray:
    """Decodes a COCO segmentation (polygons, uncompressed or compressed RLE) to a [H, W] bool mask.

    Args:
        segmentation: list of polygons ``[[x1, y1, x2, y2, ...], ...]`` in pixel-edge
            coordinates, or RLE ``{"counts": [int, ...] | str | bytes, "size": [H, W]}``, or
            None (an annotation without a "segmentation" key: a box-only file).
        height, width: image size; polygons are rasterized at this size.
        where: description of the annotation for error messages.

    Returns:
        [height, width] bool. None, empty polygon lists and polygons with fewer than 3 points give
        an all-False mask.

    Raises:
        ValueError: naming `where` for a malformed segmentation or an RLE whose size is not
            (height, width).
    """
    if segmentation is None:
        return np.zeros((height, width), dtype=bool)
    if isinstance(segmentation, list):
        polygons = []
        for polygon in segmentation:
            if not isinstance(polygon, list | tuple) or len(polygon) % 2:
                raise ValueError(f"{where}: a polygon must be a flat list [x1, y1, x2, y2, ...], got {polygon!r:.80}")
            # < 3 points has no area; pycocotools would also read a 4-number polygon as a box.
            if len(polygon) >= 6:
                polygons.append([float(v) for v in polygon])
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(s) for s in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"{where}: RLE size {size} does not match the image size [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if sum(counts) != height * width:
                raise ValueError(
                    f"{where}: uncompressed RLE counts sum to {sum(counts)}, expected {height} * {width} = {height * width}"
                )
            rle = mask_util.frPyObjects({"counts": [int(c) for c in counts], "size": size}, height, width)
        elif isinstance(counts, str | bytes):
            rle = {"counts": counts.encode("ascii") if isinstance(counts, str) else counts, "size": size}
        else:
            raise ValueError(f"{where}: RLE counts must be a list of ints or a string, got {type(counts).__name__}")
    else:
        raise ValueError(f"{where}: segmentation must be a list of polygons or an RLE dict, got {segmentation!r:.80}")
    try:
        mask = mask_util.decode(rle)
    except ValueError as error:  # pycocotools: "Invalid RLE mask representation"
        raise ValueError(f"{where}: cannot decode RLE: {error}") from error
    if mask.shape != (height, width):
        raise ValueError(f"{where}: decodes to a {mask.shape} mask, but the image is {height}x{width}")
    return mask.astype(bool)


# ----------------------------------------------------------------------------------------------
def download_coco(dataset_dir: str | Path, subset: str, year: str = "2017", verbose: int = 1) -> Path:
    """Downloads and unpacks a COCO subset and its annotations into the standard layout.

    Skips whatever is already there. Only "train" and "val" (2014, 2017) are on COCO's server.

    Args:
        dataset_dir: target folder; receives ``<subset><year>/`` and ``annotations/``.
        subset: "train" or "val".
        year: "2014" or "2017".
        verbose: 1 prints what is fetched.

    Returns:
        `dataset_dir` as a Path.

    Raises:
        ValueError: for a subset/year COCO does not serve.
        RuntimeError: when a download fails (e.g. offline), saying where to get the files.
    """
    if subset not in ("train", "val") or str(year) not in ("2014", "2017"):
        raise ValueError(
            f"download_coco serves subset 'train'/'val' and year '2014'/'2017', got {subset!r}, {year!r}; "
            f"get other files from {COCO_DOWNLOAD_PAGE}"
        )
    root = Path(dataset_dir)
    root.mkdir(parents=True, exist_ok=True)
    json_path, image_dir = coco_paths(root, subset, year)
    jobs = []
    if not image_dir.is_dir():
        jobs.append(COCO_IMAGES_URL.format(subset=subset, year=year))
    if not json_path.is_file():
        jobs.append(COCO_ANNOTATIONS_URL.format(year=year))
    for url in jobs:
        zip_path = root / url.rsplit("/", 1)[-1]
        partial = zip_path.with_suffix(".zip.part")
        if verbose:
            print(f"downloading {url} -> {zip_path}")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            partial.unlink(missing_ok=True)
            reason = getattr(error, "reason", error)
            raise RuntimeError(
                f"could not download {url} ({reason}). Get the COCO {subset}{year} images and "
                f"annotations_trainval{year}.zip from {COCO_DOWNLOAD_PAGE} and unpack them so that "
                f"{image_dir} and {json_path} exist"
            ) from error
        partial.replace(zip_path)
        if verbose:
            print(f"unpacking {zip_path}")
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(root)
        zip_path.unlink()
    return root

"""Reading polygon annotations: labelme JSON files and VIA (VGG Image Annotator) JSON.

Both formats are parsed into the same plain records, independent of any model code:

    AnnotatedImage(path, width, height, instances=[Instance(class_name, parts=[Shape, ...]), ...])

Coordinates are continuous image coordinates in pixels, x to the right and y down, pixel (row r,
column c) covering [c, c+1) x [r, r+1): the way labelme, VIA and COCO draw them. `rasterize`
sets a pixel when its centre (c + 0.5, r + 0.5) is inside the shape.

Formats read:

* **labelme** (one JSON per image): ``{"imagePath": "a.jpg", "imageHeight": H, "imageWidth": W,
  "shapes": [{"label": "balloon", "points": [[x, y], ...], "shape_type": "polygon",
  "group_id": null}, ...]}``. Shape types polygon, rectangle (two corners) and circle (centre and a
  point on the circle). Shapes with the same label and the same non-null ``group_id`` form one
  instance (labelme's way to annotate an object split by an occluder). ``imagePath`` is relative
  to the JSON file; an embedded ``imageData`` is not used.
* **VIA 2.x**: a project file (``{"_via_img_metadata": {...}, ...}``) or the "Export annotations
  (as json)" file (the same dict at the top level): ``{key: {"filename": "a.jpg", "regions":
  [{"shape_attributes": {"name": "polygon", "all_points_x": [...], "all_points_y": [...]},
  "region_attributes": {"name": "balloon"}}, ...]}}``. Shapes polygon, rect, circle, ellipse.
* **VIA 1.x** (matterport's balloon sample, ``via_region_data.json``): the same, with
  ``"regions"`` a dict ``{"0": region, ...}`` instead of a list.

Every problem raises an error naming the JSON file and the offending entry: malformed JSON,
missing keys, unsupported shape types, class names not in the given list, missing image files.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import skimage.draw

SHAPE_KINDS = ("polygon", "circle", "ellipse")


@dataclass(frozen=True)
class Shape:
    """One drawn shape, in continuous pixel coordinates (x right, y down).

    Attributes:
        kind: "polygon" (params: xs tuple, ys tuple), "circle" (cx, cy, r) or
            "ellipse" (cx, cy, rx, ry, theta in radians, clockwise on screen as VIA draws it).
        params: the kind's parameters.
    """

    kind: str
    params: tuple


@dataclass
class Instance:
    """An object: its class name and the shapes that together cover it (usually one)."""

    class_name: str
    parts: list[Shape]


@dataclass
class AnnotatedImage:
    """An image file with its instances; `annotation_file` is the JSON it was read from."""

    path: Path
    width: int
    height: int
    instances: list[Instance] = field(default_factory=list)
    annotation_file: Path | None = None


# ----------------------------------------------------------------------------------------------
# Rasterization
def rasterize(shape: Shape, height: int, width: int) -> np.ndarray:
    """[height, width] bool mask of the pixels whose centres lie inside `shape`.

    Parts outside the image are clipped.
    """
    mask = np.zeros((height, width), bool)
    if shape.kind == "polygon":
        xs, ys = (np.asarray(v, np.float64) for v in shape.params)
        # skimage.draw.polygon tests integer (row, col) points: shift by half a pixel so that it
        # tests the pixel centres of our continuous coordinates.
        rr, cc = skimage.draw.polygon(ys - 0.5, xs - 0.5, shape=(height, width))
        mask[rr, cc] = True
        return mask
    if shape.kind == "circle":
        cx, cy, r = shape.params
        cx, cy, rx, ry, theta = cx, cy, r, r, 0.0
    elif shape.kind == "ellipse":
        cx, cy, rx, ry, theta = shape.params
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}; expected one of {SHAPE_KINDS}")
    # The implicit equation over pixel centres, in the ellipse's own frame: exact, and the rotation
    # is VIA's canvas rotation (y down), which skimage.draw.ellipse's convention does not spell out.
    rows, cols = np.mgrid[0:height, 0:width]
    dx, dy = cols + 0.5 - cx, rows + 0.5 - cy
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    return (u / max(rx, 1e-9)) ** 2 + (v / max(ry, 1e-9)) ** 2 < 1.0


def instance_mask(instance: Instance, height: int, width: int) -> np.ndarray:
    """[height, width] bool union of an instance's parts."""
    mask = np.zeros((height, width), bool)
    for part in instance.parts:
        mask |= rasterize(part, height, width)
    return mask


# ----------------------------------------------------------------------------------------------
# Shared helpers
def read_json(path: Path) -> Any:
    """Parsed JSON; errors name the file (FileNotFoundError when missing, ValueError when malformed)."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a UTF-8 text (JSON) file ({error})") from error


def _image_size(image_path: Path, annotation_file: Path) -> tuple[int, int]:
    """(width, height) from the image header; the error names the JSON that refers to the image."""
    from PIL import Image, UnidentifiedImageError

    if not image_path.is_file():
        raise FileNotFoundError(f"{annotation_file}: image file not found: {image_path}")
    try:
        with Image.open(image_path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{annotation_file}: cannot read image {image_path} ({error})") from error


def _number_list(values: Any, what: str, where: str) -> tuple[float, ...]:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in values):
        raise ValueError(f"{where}: {what} must be a list of numbers, got {values!r}")
    return tuple(float(v) for v in values)


def _polygon(xs: Sequence[float], ys: Sequence[float], where: str) -> Shape | None:
    """The polygon, or None for one of fewer than 3 points (no area: a stray click in the tool)."""
    if len(xs) != len(ys):
        raise ValueError(f"{where}: {len(xs)} x coordinates but {len(ys)} y coordinates")
    if len(xs) < 3:
        return None
    return Shape("polygon", (tuple(xs), tuple(ys)))


def _warn_skipped(json_path: Path, skipped: list[str]) -> None:
    """One warning per file for the polygons of fewer than 3 points that were left out.

    COCO files get the same treatment (`mrcnn.data.coco`): such a polygon has no pixel, and one
    stray click should not stop a dataset from loading.
    """
    if skipped:
        warnings.warn(f"{json_path}: left out {len(skipped)} polygon(s) of fewer than 3 points (no area): "
                      f"{', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}", stacklevel=3)


def check_class_names(images: Iterable[AnnotatedImage], class_names: Sequence[str]) -> None:
    """Raises ValueError naming the file, the instance and the known names for an unknown class."""
    known = set(class_names)
    for image in images:
        for index, instance in enumerate(image.instances):
            if instance.class_name not in known:
                raise ValueError(f"{image.annotation_file}: instance {index} of {image.path.name} has class "
                                 f"{instance.class_name!r}, not one of {list(class_names)}")


def collect_class_names(images: Iterable[AnnotatedImage]) -> list[str]:
    """The sorted class names used in `images`."""
    return sorted({instance.class_name for image in images for instance in image.instances})


# ----------------------------------------------------------------------------------------------
# labelme
def read_labelme(json_path: str | Path) -> AnnotatedImage:
    """Reads one labelme JSON file.

    Returns:
        The image (path resolved relative to the JSON file) with one Instance per shape, or per
        (label, group_id) group when group_id is set.

    Raises:
        FileNotFoundError: the JSON or the image it names is missing (naming both).
        ValueError: malformed JSON, a missing key, an unsupported shape type, bad points, or
            imageHeight/imageWidth that disagree with the image file.

    Warns:
        UserWarning: once per file, naming the polygons of fewer than 3 points that were left out.
    """
    json_path = Path(json_path)
    data = read_json(json_path)
    if not isinstance(data, dict) or "shapes" not in data:
        raise ValueError(f"{json_path}: not a labelme file (no 'shapes' list at the top level)")
    if not data.get("imagePath"):
        raise ValueError(f"{json_path}: labelme file has no 'imagePath'")
    # labelme written on Windows stores backslashes.
    image_path = (json_path.parent / str(data["imagePath"]).replace("\\", "/")).resolve()
    width, height = _image_size(image_path, json_path)
    declared = (data.get("imageWidth"), data.get("imageHeight"))
    if None not in declared and tuple(declared) != (width, height):
        raise ValueError(f"{json_path}: imageWidth x imageHeight = {declared[0]} x {declared[1]} but "
                         f"{image_path} is {width} x {height}")
    if not isinstance(data["shapes"], list):
        raise ValueError(f"{json_path}: 'shapes' must be a list")
    instances: list[Instance] = []
    groups: dict[tuple[str, Any], Instance] = {}
    skipped: list[str] = []
    for index, entry in enumerate(data["shapes"]):
        where = f"{json_path}: shapes[{index}]"
        if not isinstance(entry, dict) or "label" not in entry or "points" not in entry:
            raise ValueError(f"{where} needs 'label' and 'points'")
        shape = _labelme_shape(entry, where)
        if shape is None:
            skipped.append(f"shapes[{index}]")
            continue
        label, group_id = str(entry["label"]), entry.get("group_id")
        if group_id is not None and (label, group_id) in groups:
            groups[(label, group_id)].parts.append(shape)
            continue
        instance = Instance(label, [shape])
        instances.append(instance)
        if group_id is not None:
            groups[(label, group_id)] = instance
    _warn_skipped(json_path, skipped)
    return AnnotatedImage(image_path, width, height, instances, json_path)


def _labelme_shape(entry: dict, where: str) -> Shape | None:
    points = entry["points"]
    if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 2 for p in points):
        raise ValueError(f"{where}: 'points' must be a list of [x, y] pairs")
    xs = _number_list([p[0] for p in points], "x coordinates", where)
    ys = _number_list([p[1] for p in points], "y coordinates", where)
    kind = entry.get("shape_type") or "polygon"  # labelme before 3.x had no shape_type
    if kind == "polygon":
        return _polygon(xs, ys, where)
    if kind == "rectangle":
        if len(xs) != 2:
            raise ValueError(f"{where}: a rectangle has 2 corner points, got {len(xs)}")
        (x1, x2), (y1, y2) = sorted(xs), sorted(ys)
        return Shape("polygon", ((x1, x2, x2, x1), (y1, y1, y2, y2)))
    if kind == "circle":
        if len(xs) != 2:
            raise ValueError(f"{where}: a circle has 2 points (centre, a point on the circle), got {len(xs)}")
        return Shape("circle", (xs[0], ys[0], math.hypot(xs[1] - xs[0], ys[1] - ys[0])))
    raise ValueError(f"{where}: shape_type {kind!r} has no area (supported: polygon, rectangle, circle); "
                     "remove it or convert it to a polygon")


def find_labelme_files(folder: str | Path) -> list[Path]:
    """The labelme JSON files in `folder` (files with a top-level 'shapes' list), sorted."""
    found = []
    for path in sorted(Path(folder).glob("*.json")):
        data = read_json(path)
        if isinstance(data, dict) and "shapes" in data:
            found.append(path)
    return found


# ----------------------------------------------------------------------------------------------
# VIA
def is_via(data: Any) -> bool:
    """Whether parsed JSON looks like a VIA 1.x/2.x project or annotation export."""
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        return True
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(v, dict) and "filename" in v and "regions" in v for v in data.values()))


def read_via(json_path: str | Path, image_dir: str | Path | None = None, class_attribute: str | None = "name",
             default_class: str | None = None) -> list[AnnotatedImage]:
    """Reads a VIA 2.x project/export file or a VIA 1.x region file.

    Args:
        json_path: the JSON file.
        image_dir: folder of the images (default: the JSON's folder).
        class_attribute: the region attribute holding the class name (a text/radio/dropdown
            attribute gives a string, a checkbox attribute a {name: true} dict with one name set).
        default_class: class of regions without that attribute (e.g. "balloon" for matterport's
            single-class balloon data, whose regions have no attributes). None: such a region is an error.

    Returns:
        One AnnotatedImage per image entry, in file order (images without regions included).

    Raises:
        FileNotFoundError: the JSON or an image it names is missing.
        ValueError: malformed JSON/entries, unsupported shapes, a region without a class.

    Warns:
        UserWarning: once per file, naming the polygons of fewer than 3 points that were left out.
    """
    json_path = Path(json_path)
    image_dir = Path(image_dir) if image_dir is not None else json_path.parent
    data = read_json(json_path)
    if isinstance(data, dict) and "project" in data and "metadata" in data and "file" in data:
        raise ValueError(f"{json_path}: a VIA 3 project; export it from VIA 2 (or as COCO JSON) instead")
    if not is_via(data):
        raise ValueError(f"{json_path}: not a VIA file (expected '_via_img_metadata' or entries with "
                         "'filename' and 'regions')")
    entries = data["_via_img_metadata"] if "_via_img_metadata" in data else data
    images = []
    skipped: list[str] = []
    for key, entry in entries.items():
        where = f"{json_path}: entry {key!r}"
        image_path = (image_dir / str(entry["filename"])).resolve()
        width, height = _image_size(image_path, json_path)
        regions = entry["regions"]
        if isinstance(regions, dict):  # VIA 1.x: {"0": region, "1": region, ...}
            regions = list(regions.values())
        if not isinstance(regions, list):
            raise ValueError(f"{where}: 'regions' must be a list (VIA 2) or a dict (VIA 1)")
        instances = []
        for index, region in enumerate(regions):
            region_where = f"{where} region {index}"
            if not isinstance(region, dict) or not isinstance(region.get("shape_attributes"), dict):
                raise ValueError(f"{region_where} has no 'shape_attributes'")
            name = _via_class(region.get("region_attributes") or {}, class_attribute, default_class, region_where)
            shape = _via_shape(region["shape_attributes"], region_where)
            if shape is None:
                skipped.append(f"entry {key!r} region {index}")
                continue
            instances.append(Instance(name, [shape]))
        images.append(AnnotatedImage(image_path, width, height, instances, json_path))
    _warn_skipped(json_path, skipped)
    return images


def _via_class(attributes: dict, class_attribute: str | None, default_class: str | None, where: str) -> str:
    value = attributes.get(class_attribute) if class_attribute else None
    if isinstance(value, dict):  # checkbox attribute: {"balloon": true, "kite": false}
        chosen = [k for k, v in value.items() if v]
        if len(chosen) != 1:
            raise ValueError(f"{where}: region attribute {class_attribute!r} must select one class, got {value!r}")
        value = chosen[0]
    if value in (None, ""):
        if default_class is None:
            raise ValueError(f"{where} has no class: region_attributes {attributes!r} lack {class_attribute!r} "
                             "(pass class_attribute=... or default_class=...)")
        return default_class
    return str(value)


def _via_shape(attributes: dict, where: str) -> Shape | None:
    kind = attributes.get("name")

    def number(key: str) -> float:
        value = attributes.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{where}: {kind} needs a number {key!r}, got {value!r}")
        return float(value)

    if kind == "polygon":
        xs = _number_list(attributes.get("all_points_x"), "all_points_x", where)
        ys = _number_list(attributes.get("all_points_y"), "all_points_y", where)
        return _polygon(xs, ys, where)
    if kind == "rect":
        x, y, w, h = number("x"), number("y"), number("width"), number("height")
        return Shape("polygon", ((x, x + w, x + w, x), (y, y, y + h, y + h)))
    if kind == "circle":
        return Shape("circle", (number("cx"), number("cy"), number("r")))
    if kind == "ellipse":
        theta = float(attributes.get("theta", 0.0) or 0.0)
        return Shape("ellipse", (number("cx"), number("cy"), number("rx"), number("ry"), theta))
    raise ValueError(f"{where}: shape {kind!r} has no area (supported: polygon, rect, circle, ellipse)")

"""samples/custom/annotations.py: labelme and VIA parsing and rasterization, on the committed fixture."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from samples.custom.annotations import Shape, instance_mask, rasterize, read_labelme, read_via

FIXTURE = Path(__file__).resolve().parents[2] / "samples" / "custom" / "fixture"
H, W = 72, 96


# ----------------------------------------------------------------------------------------------
# Independent references: pixel centres tested one by one in plain Python
def centres_in_polygon(xs, ys, height=H, width=W) -> np.ndarray:
    """Even-odd ray casting at every pixel centre; asserts no centre lies on an edge (ambiguous)."""
    mask = np.zeros((height, width), bool)
    n = len(xs)
    for r in range(height):
        py = r + 0.5
        for c in range(width):
            px = c + 0.5
            inside = False
            for i in range(n):
                x1, y1, x2, y2 = xs[i], ys[i], xs[(i + 1) % n], ys[(i + 1) % n]
                cross = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
                on_segment = min(x1, x2) <= px <= max(x1, x2) and min(y1, y2) <= py <= max(y1, y2)
                assert not (abs(cross) < 1e-9 and on_segment), f"centre ({px}, {py}) on an edge: ambiguous fixture"
                if (y1 > py) != (y2 > py) and px < x1 + (py - y1) * (x2 - x1) / (y2 - y1):
                    inside = not inside
            mask[r, c] = inside
    return mask


def shoelace(xs, ys) -> float:
    return abs(sum(xs[i] * ys[(i + 1) % len(xs)] - xs[(i + 1) % len(xs)] * ys[i] for i in range(len(xs)))) / 2


def centres_in_ellipse(cx, cy, rx, ry, theta, height=H, width=W) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    for r in range(height):
        for c in range(width):
            dx, dy = c + 0.5 - cx, r + 0.5 - cy
            u = dx * math.cos(theta) + dy * math.sin(theta)
            v = -dx * math.sin(theta) + dy * math.cos(theta)
            mask[r, c] = (u / rx) ** 2 + (v / ry) ** 2 < 1
    return mask


def labelme_doc(name: str) -> dict:
    return json.loads((FIXTURE / "train" / f"{name}.json").read_text())


# ----------------------------------------------------------------------------------------------
def test_rasterize_polygon_matches_pixel_centres() -> None:
    xs, ys = (10.0, 20.0, 32.0, 36.0, 26.0, 14.0), (20.0, 12.0, 12.0, 26.0, 34.0, 33.0)
    mask = rasterize(Shape("polygon", (xs, ys)), H, W)
    np.testing.assert_array_equal(mask, centres_in_polygon(xs, ys))
    perimeter = sum(math.dist((xs[i], ys[i]), (xs[i - 1], ys[i - 1])) for i in range(len(xs)))
    assert abs(mask.sum() - shoelace(xs, ys)) < perimeter / 2
    # An axis-aligned rectangle with integer corners covers exactly its area.
    assert rasterize(Shape("polygon", ((5, 25, 25, 5), (3, 3, 13, 13))), H, W).sum() == 200
    # Clipped at the border instead of failing.
    assert rasterize(Shape("polygon", ((-10, 10, 10, -10), (-5, -5, 5, 5))), H, W).sum() == 50


def test_rasterize_circle_and_rotated_ellipse() -> None:
    circle = rasterize(Shape("circle", (30.0, 36.0, 14.0)), H, W)
    np.testing.assert_array_equal(circle, centres_in_ellipse(30, 36, 14, 14, 0))
    assert abs(circle.sum() - math.pi * 14**2) < 2 * math.pi * 14 / 2
    theta = 0.5
    ellipse = rasterize(Shape("ellipse", (66.0, 46.0, 20.0, 9.0, theta)), H, W)
    np.testing.assert_array_equal(ellipse, centres_in_ellipse(66, 46, 20, 9, theta))
    # VIA rotates on a y-down canvas: the major axis points to (cos, +sin), i.e. down-right.
    along = (66 + 18 * math.cos(theta), 46 + 18 * math.sin(theta))
    mirrored = (66 + 18 * math.cos(theta), 46 - 18 * math.sin(theta))
    assert ellipse[int(along[1]), int(along[0])] and not ellipse[int(mirrored[1]), int(mirrored[0])]


def test_labelme_polygon_and_rectangle() -> None:
    image = read_labelme(FIXTURE / "train" / "a.json")
    assert image.path == (FIXTURE / "train" / "a.png").resolve()
    assert (image.width, image.height) == (W, H)
    assert [i.class_name for i in image.instances] == ["balloon", "box"]
    points = labelme_doc("a")["shapes"][0]["points"]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    np.testing.assert_array_equal(instance_mask(image.instances[0], H, W), centres_in_polygon(xs, ys))
    box = instance_mask(image.instances[1], H, W)  # rectangle corners (50, 20), (80, 50)
    assert box.sum() == 30 * 30 and box[20:50, 50:80].all()


def test_labelme_circle_and_group_id_parts() -> None:
    image = read_labelme(FIXTURE / "train" / "b.json")
    # Four shapes, two of them one instance through group_id 1.
    assert [(i.class_name, len(i.parts)) for i in image.instances] == [("balloon", 1), ("box", 2), ("box", 1)]
    np.testing.assert_array_equal(instance_mask(image.instances[0], H, W), centres_in_ellipse(30, 36, 14, 14, 0))
    assert instance_mask(image.instances[1], H, W).sum() == 16 * 12 + 16 * 14
    points = labelme_doc("b")["shapes"][3]["points"]
    np.testing.assert_array_equal(instance_mask(image.instances[2], H, W),
                                  centres_in_polygon([p[0] for p in points], [p[1] for p in points]))


def test_via2_project_and_export() -> None:
    project = FIXTURE / "val" / "via_project.json"
    images = read_via(project)
    assert [i.path.name for i in images] == ["c.png", "d.png"]
    assert [[inst.class_name for inst in i.instances] for i in images] == [["balloon", "box"], ["balloon", "box"]]
    c, d = images
    np.testing.assert_array_equal(instance_mask(c.instances[0], H, W), centres_in_polygon([8, 40, 30], [8, 12, 40]))
    assert instance_mask(c.instances[1], H, W).sum() == 34 * 30  # rect x=52 y=30 34 x 30
    np.testing.assert_array_equal(instance_mask(d.instances[0], H, W), centres_in_ellipse(24, 24, 15, 15, 0))
    np.testing.assert_array_equal(instance_mask(d.instances[1], H, W), centres_in_ellipse(66, 46, 20, 9, 0.5))
    # "Export annotations (as json)" writes the metadata dict alone: same result.
    export = project.parent / "export_tmp.json"
    try:
        export.write_text(json.dumps(json.loads(project.read_text())["_via_img_metadata"]))
        again = read_via(export)
    finally:
        export.unlink()
    assert [[inst.parts for inst in i.instances] for i in again] == [[inst.parts for inst in i.instances] for i in images]


def test_via1_dict_regions_and_default_class() -> None:
    path = FIXTURE / "via1" / "via_region_data.json"
    with pytest.raises(ValueError, match=r"via_region_data.json.*region 0 has no class"):
        read_via(path)
    (image,) = read_via(path, default_class="balloon")
    assert [i.class_name for i in image.instances] == ["balloon", "balloon"]
    np.testing.assert_array_equal(instance_mask(image.instances[1], H, W),
                                  centres_in_polygon([50, 86, 70], [30, 28, 64]))


def test_via_checkbox_attribute(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "val" / "c.png", tmp_path / "c.png")
    region = {"shape_attributes": {"name": "rect", "x": 1, "y": 2, "width": 3, "height": 4},
              "region_attributes": {"kind": {"box": True, "balloon": False}}}
    (tmp_path / "v.json").write_text(json.dumps({"c.png1": {"filename": "c.png", "regions": [region]}}))
    (image,) = read_via(tmp_path / "v.json", class_attribute="kind")
    assert image.instances[0].class_name == "box" and instance_mask(image.instances[0], H, W).sum() == 12


def test_polygons_of_fewer_than_3_points_are_left_out_with_one_warning(tmp_path: Path) -> None:
    # A stray click makes a 1- or 2-point polygon: it has no area, so it is dropped (as COCO's
    # loader does) and named once per file, instead of stopping the whole dataset.
    doc = labelme_doc("a")
    doc["imagePath"] = str(FIXTURE / "train" / "a.png")
    good = len(doc["shapes"])
    doc["shapes"] += [{"label": "balloon", "points": [[1, 2], [3, 4]], "shape_type": "polygon"},
                      {"label": "box", "points": [[5, 6]]}]
    (tmp_path / "a.json").write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match=rf"a.json: left out 2 polygon\(s\) of fewer than 3 points \(no area\): "
                                         rf"shapes\[{good}\], shapes\[{good + 1}\]$"):
        image = read_labelme(tmp_path / "a.json")
    assert [i.class_name for i in image.instances] == ["balloon", "box"]

    project = json.loads((FIXTURE / "val" / "via_project.json").read_text())
    regions = project["_via_img_metadata"]["d.png11646"]["regions"]
    regions.insert(0, {"shape_attributes": {"name": "polygon", "all_points_x": [1, 2], "all_points_y": [3, 4]},
                       "region_attributes": {"name": "balloon"}})
    for name in ("c.png", "d.png"):
        shutil.copy(FIXTURE / "val" / name, tmp_path / name)
    (tmp_path / "via.json").write_text(json.dumps(project))
    with pytest.warns(UserWarning, match=r"via.json: left out 1 polygon\(s\) .*: entry 'd.png11646' region 0$"):
        images = read_via(tmp_path / "via.json")
    assert [[inst.class_name for inst in i.instances] for i in images] == [["balloon", "box"], ["balloon", "box"]]


# ----------------------------------------------------------------------------------------------
# Errors name the file and what is wrong
def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{"shapes": [ {"label": "balloon", "points": [[1, 2], ')
    with pytest.raises(ValueError, match=r"broken.json: not valid JSON"):
        read_labelme(bad)
    with pytest.raises(ValueError, match=r"broken.json: not valid JSON"):
        read_via(bad)
    (tmp_path / "other.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="other.json: not a labelme file"):
        read_labelme(tmp_path / "other.json")
    with pytest.raises(ValueError, match="other.json: not a VIA file"):
        read_via(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_labelme(tmp_path / "absent.json")


def test_missing_image_names_json_and_image(tmp_path: Path) -> None:
    doc = labelme_doc("a")
    doc["imagePath"] = "gone.png"
    (tmp_path / "a.json").write_text(json.dumps(doc))
    with pytest.raises(FileNotFoundError, match=r"a.json: image file not found: .*gone.png"):
        read_labelme(tmp_path / "a.json")
    shutil.copy(FIXTURE / "val" / "via_project.json", tmp_path / "via_project.json")
    with pytest.raises(FileNotFoundError, match=r"via_project.json: image file not found: .*c.png"):
        read_via(tmp_path / "via_project.json")


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(shape_type="line"), r"shapes\[0\]: shape_type 'line' has no area"),
    (lambda s: s.update(points=[[1, "y"], [3, 4], [5, 6]]), r"shapes\[0\]: y coordinates must be"),
    (lambda s: s.pop("points"), r"shapes\[0\] needs 'label' and 'points'"),
])
def test_bad_labelme_shapes(tmp_path: Path, change, message) -> None:
    doc = labelme_doc("a")
    change(doc["shapes"][0])
    doc["imagePath"] = str(FIXTURE / "train" / "a.png")
    (tmp_path / "a.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message):
        read_labelme(tmp_path / "a.json")


def test_labelme_size_disagreeing_with_image(tmp_path: Path) -> None:
    doc = labelme_doc("a")
    doc.update(imagePath=str(FIXTURE / "train" / "a.png"), imageWidth=100)
    (tmp_path / "a.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="100 x 72 but .*a.png is 96 x 72"):
        read_labelme(tmp_path / "a.json")

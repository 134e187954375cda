"""`PolygonDataset`: a `mrcnn.Dataset` over labelme / VIA polygon annotations.

The fine-tuning idiom (matterport's balloon sample) on the formats people annotate in:

    train = PolygonDataset()
    train.load_folder("mydata/train", class_names=["balloon", "kite"])   # labelme JSONs or a VIA JSON
    train.prepare()
    masks, class_ids = train.load_mask(0)     # [H, W, N] bool, [N] int32 (1 = balloon, 2 = kite)

Class ids follow `class_names` (1, 2, ... in that order; 0 is the background), so train and
validation sets built with the same list agree. Masks are rasterized when loaded (pixel centres
inside the shapes, see samples/custom/annotations.py), so nothing large is held in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mrcnn.data.dataset import Dataset
from samples.custom.annotations import (
    AnnotatedImage,
    check_class_names,
    collect_class_names,
    find_labelme_files,
    instance_mask,
    is_via,
    read_json,
    read_labelme,
    read_via,
)


class PolygonDataset(Dataset):
    """Images with polygon/rectangle/circle/ellipse instances from labelme or VIA files."""

    def register_classes(self, class_names: Sequence[str], source: str = "custom") -> None:
        """Adds `class_names` as classes 1..n of `source`.

        Raises:
            ValueError: if the list is empty or has duplicates, or if `source` already has a
                class with the same id and another name (train and val must use one list).
        """
        if not class_names:
            raise ValueError("class_names is empty: a dataset needs at least one class besides the background")
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names has duplicates: {list(class_names)}")
        for class_id, name in enumerate(class_names, start=1):
            for info in self.class_info:
                if info["source"] == source and info["id"] == class_id and info["name"] != name:
                    raise ValueError(f"class {class_id} of source {source!r} is already {info['name']!r}, "
                                     f"not {name!r}: load every file with the same class_names")
            self.add_class(source, class_id, name)

    def add_annotated_images(self, images: Sequence[AnnotatedImage], class_names: Sequence[str] | None = None,
                             source: str = "custom") -> list[str]:
        """Registers parsed images (see annotations.py).

        Args:
            images: AnnotatedImage records.
            class_names: the classes, in id order; None: the sorted names used in `images`.
            source: the dataset source name.

        Returns:
            The class names used.

        Raises:
            ValueError: an instance's class is not in `class_names` (naming the file).
        """
        names = list(class_names) if class_names is not None else collect_class_names(images)
        check_class_names(images, names)
        self.register_classes(names, source)
        start = sum(1 for info in self.image_info if info["source"] == source)
        for offset, image in enumerate(images):
            self.add_image(source, image_id=start + offset, path=str(image.path), width=image.width,
                           height=image.height, instances=image.instances,
                           class_names=names, annotation_file=str(image.annotation_file))
        return names

    def load_labelme(self, files_or_folder: str | Path | Sequence[str | Path],
                     class_names: Sequence[str] | None = None, source: str = "custom") -> list[str]:
        """Adds labelme-annotated images: a folder of JSON files, or a list of JSON files.

        Returns:
            The class names (as `add_annotated_images`).
        """
        if isinstance(files_or_folder, (str, Path)) and Path(files_or_folder).is_dir():
            files = find_labelme_files(files_or_folder)
            if not files:
                raise FileNotFoundError(f"no labelme JSON files in {files_or_folder}")
        elif isinstance(files_or_folder, (str, Path)):
            files = [Path(files_or_folder)]
        else:
            files = [Path(f) for f in files_or_folder]
        return self.add_annotated_images([read_labelme(f) for f in files], class_names, source)

    def load_via(self, json_path: str | Path, image_dir: str | Path | None = None,
                 class_names: Sequence[str] | None = None, class_attribute: str | None = "name",
                 default_class: str | None = None, source: str = "custom") -> list[str]:
        """Adds the images of a VIA 1.x/2.x JSON file (see `annotations.read_via` for the arguments).

        Returns:
            The class names (as `add_annotated_images`).
        """
        images = read_via(json_path, image_dir, class_attribute=class_attribute, default_class=default_class)
        return self.add_annotated_images(images, class_names, source)

    def load_folder(self, folder: str | Path, class_names: Sequence[str] | None = None,
                    class_attribute: str | None = "name", default_class: str | None = None,
                    source: str = "custom") -> list[str]:
        """Adds every annotated image of a folder: its labelme JSONs and its VIA JSON files.

        Raises:
            FileNotFoundError: the folder is missing or holds no annotation file.
            ValueError: an image annotated in two of its files (naming both).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {folder}")
        images: list[AnnotatedImage] = []
        for path in sorted(folder.glob("*.json")):
            data = read_json(path)
            if isinstance(data, dict) and "shapes" in data:
                images.append(read_labelme(path))
            elif is_via(data):
                images.extend(read_via(path, folder, class_attribute=class_attribute, default_class=default_class))
        if not images:
            raise FileNotFoundError(f"no labelme or VIA JSON files in {folder}")
        first_file: dict[Path, Path] = {}
        for image in images:
            earlier = first_file.setdefault(Path(image.path).resolve(), Path(image.annotation_file))
            if earlier != Path(image.annotation_file):
                # It would train (and be scored) twice, with whichever regions each file holds.
                raise ValueError(f"{image.path} is annotated in both {earlier.name} and "
                                 f"{Path(image.annotation_file).name}: keep one annotation file per image in "
                                 f"{folder} (a VIA project file and its exported annotations hold the same regions)")
        return self.add_annotated_images(images, class_names, source)

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Rasterized instance masks.

        Returns:
            masks [H, W, N] bool (N may be 0), class_ids [N] int32 internal ids.
        """
        info = self.image_info[image_id]
        if "instances" not in info:
            return super().load_mask(image_id)
        height, width = info["height"], info["width"]
        instances = info["instances"]
        if not instances:
            return np.zeros((height, width, 0), bool), np.zeros((0,), np.int32)
        masks = np.stack([instance_mask(inst, height, width) for inst in instances], axis=-1)
        names = info["class_names"]
        class_ids = np.array([self.map_source_class_id(f"{info['source']}.{names.index(inst.class_name) + 1}")
                              for inst in instances], np.int32)
        return masks, class_ids

    def image_reference(self, image_id: int) -> str:
        """The image path and the annotation file it came from."""
        info = self.image_info[image_id]
        return f"{info['path']} (annotations: {info.get('annotation_file')})"

"""Tiny generated datasets for data-pipeline tests (no files, no other sample code).

`SquaresDataset` draws axis-aligned filled rectangles, each in its own colour, on a dark background.
Instance masks are exactly the rectangles (later ones occlude earlier ones), so a test can check
that a mask stays aligned with its coloured region through resizing and augmentation.
"""

from __future__ import annotations

import numpy as np

from mrcnn.data.dataset import Dataset

CLASS_NAMES = ("square", "wide", "tall")


class SquaresDataset(Dataset):
    """Generated rectangles; classes 1..3 of source "toy".

    Args:
        num_images: images to register.
        height, width: image size.
        instances: per image, an int or (min, max) range of instance counts (0 allowed).
        crowd_every: when > 0, every `crowd_every`-th instance is marked crowd (negative class id).
        seed: seed of the layout.
    """

    def __init__(self, num_images: int = 4, height: int = 96, width: int = 128,
                 instances: int | tuple[int, int] = (1, 4), crowd_every: int = 0, seed: int = 0) -> None:
        super().__init__()
        for i, name in enumerate(CLASS_NAMES, start=1):
            self.add_class("toy", i, name)
        rng = np.random.default_rng(seed)
        low, high = (instances, instances) if isinstance(instances, int) else instances
        for image_id in range(num_images):
            count = int(rng.integers(low, high + 1))
            shapes = []
            for k in range(count):
                h = int(rng.integers(max(4, height // 10), max(5, height // 2)))
                w = int(rng.integers(max(4, width // 10), max(5, width // 2)))
                y = int(rng.integers(0, height - h + 1))
                x = int(rng.integers(0, width - w + 1))
                color = tuple(int(c) for c in rng.integers(80, 256, size=3))
                class_id = int(rng.integers(1, len(CLASS_NAMES) + 1))
                if crowd_every and (k + 1) % crowd_every == 0:
                    class_id = -class_id
                shapes.append((class_id, color, (y, x, y + h, x + w)))
            self.add_image("toy", image_id=image_id, path=None, height=height, width=width, shapes=shapes)
        self.prepare()

    def load_image(self, image_id: int) -> np.ndarray:
        info = self.image_info[image_id]
        image = np.full((info["height"], info["width"], 3), 20, dtype=np.uint8)
        for _, color, (y1, x1, y2, x2) in info["shapes"]:
            image[y1:y2, x1:x2] = color
        return image

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.image_info[image_id]
        shapes = info["shapes"]
        masks = np.zeros((info["height"], info["width"], len(shapes)), dtype=bool)
        for k, (_, _, (y1, x1, y2, x2)) in enumerate(shapes):
            masks[y1:y2, x1:x2, :k] = False  # occlusion: later shapes cover earlier ones
            masks[y1:y2, x1:x2, k] = True
        class_ids = np.array([s[0] for s in shapes], dtype=np.int32)
        return masks, class_ids

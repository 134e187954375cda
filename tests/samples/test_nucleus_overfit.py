"""Training tests of the nucleus sample: the U-Net overfits the two fixture crops.

Both images are 128 x 128 crops with 8 and 9 nuclei (tests/fixtures/nucleus). The score is the
sample's own protocol (samples/nucleus/evaluate.py: pycocotools mask AP50, maxDets 1000).
"""

from __future__ import annotations

import keras
import pytest

from mrcnn.data.augment import Compose, HorizontalFlip, VerticalFlip
from samples.nucleus.evaluate import evaluate_nuclei
from samples.nucleus.unet import UNetDetector, build_unet, train_unet


@pytest.mark.slow
def test_unet_overfits_two_nuclei_images(fixture_images):
    keras.utils.set_random_seed(0)
    model = build_unet(depth=3, base_filters=16)
    train_unet(model, fixture_images, steps=150, crop=128, batch_size=2, learning_rate=3e-3,
               augmentation=Compose([HorizontalFlip(), VerticalFlip()]), seed=0, verbose=0)
    detector = UNetDetector(model, tile=128, margin=16, min_distance=5)
    metrics = evaluate_nuclei(detector.detect, fixture_images, verbose=0)
    assert metrics["mask_AP50"] >= 0.8, metrics
    assert metrics["num_images"] == 2 and metrics["seconds_per_image"] > 0

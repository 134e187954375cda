"""samples/keypoints/keypoints.py: evaluation and drawing of the stick-figure Keypoint R-CNN sample."""

from __future__ import annotations

import numpy as np

from samples.keypoints import keypoints as sample


class _Silent:
    """A detector that finds nothing (an untrained model), with the config the drawing reads."""

    config = sample.DemoConfig()

    def detect(self, images, verbose=0):
        k = self.config.NUM_KEYPOINTS
        return [{"rois": np.zeros((0, 4), np.int32), "class_ids": np.zeros(0, np.int32),
                 "scores": np.zeros(0, np.float32), "keypoints": np.zeros((0, k, 3), np.float32)} for _ in images]


def test_nothing_detected_still_scores_zero_and_draws_as_many_panels_as_images(tmp_path):
    dataset = sample._dataset(2, seed=3, size=128)
    metrics = sample.evaluate(_Silent(), dataset)
    assert metrics["num_detections"] == 0 and "detected nothing" in metrics["note"]
    assert metrics["keypoints"]["AP"] == 0.0 and metrics["bbox"]["AP"] == 0.0
    sample.draw(_Silent(), dataset, tmp_path / "kp.png")  # 2 images: 2 panels, not 4 with 2 empty
    assert (tmp_path / "kp.png").stat().st_size > 0


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    """Found in review: the script did not go through run_command, so --minutes 0 gave a traceback."""
    assert sample.main(["--minutes", "0", "--logs", str(tmp_path)]) == 2
    assert "keypoints.py: error: --minutes must be positive" in capsys.readouterr().err
    assert sample.main(["--train-images", "0", "--logs", str(tmp_path)]) == 2

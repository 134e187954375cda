"""The committed nucleus fixture for the nucleus sample's tests: two 128 x 128 DSB2018 crops in the
Kaggle layout, with 8 and 9 nuclei (tests/fixtures/nucleus/kaggle)."""

from __future__ import annotations

from pathlib import Path

from samples.nucleus.dataset import NucleusDataset

KAGGLE_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "nucleus" / "kaggle"


def load_fixture(dataset_class: type[NucleusDataset] = NucleusDataset) -> NucleusDataset:
    """The fixture loaded and prepared as `dataset_class` (a NucleusDataset or a subclass)."""
    dataset = dataset_class()
    dataset.load_kaggle(KAGGLE_FIXTURE)
    dataset.prepare()
    return dataset

"""Fixtures of the sample tests."""

from __future__ import annotations

import pytest

from samples.nucleus.dataset import NucleusDataset
from tests.samples.nucleus_fixture import load_fixture


@pytest.fixture(scope="module")
def fixture_images() -> NucleusDataset:
    """The two committed nucleus crops (see nucleus_fixture.py), loaded once per test module."""
    return load_fixture()

"""Fixtures shared by the OSCD evaluation tests: a tiny release and a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.matter_model.oscd_fixtures import make_release
from tests.matter_model.tiny_model import tiny_checkpoint


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three-labelled-city release of :func:`make_release`."""
    return make_release(tmp_path_factory.mktemp("oscd"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the tiny network with random weights."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt")

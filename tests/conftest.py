"""Shared fixtures: where the real data lives, and a tiny demo world generated once per session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("MATTER_REAL_DATA", REPO.parent / "shared" / "data"))


def _real_data(*parts: str) -> Path:
    path = REAL_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} is absent (set MATTER_REAL_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def real_data() -> Callable[..., Path]:
    """``real_data("oscd")``: a path under the real data folder, or skip the test saying why."""
    return _real_data


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo world (2 regions, 4 dates, 96 px), generated once for the whole session."""
    from pipelines.demo_world import TINY_SPEC, generate_demo_world

    root = tmp_path_factory.mktemp("demo") / "world"
    generate_demo_world(root, TINY_SPEC)
    return root

"""The chain on the tiny demo world, run once per session as `make demo` runs it: shared by the
end-to-end and browser tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.assets.demo_chain import FAKE_SECRETS, run_in, rustac_servers, tiny_config


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("e2e")
    config = tiny_config(tmp)
    result = run_in([sys.executable, "-m", "assets.demo"], config, tmp, extra_env=FAKE_SECRETS)
    (tmp / "demo.stdout").write_text(result.stdout)  # kept for the secrets scan
    (tmp / "demo.stderr").write_text(result.stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not rustac_servers(tmp), "the STAC server outlived the run"
    return tmp, config, result.stdout

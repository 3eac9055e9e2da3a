"""Helpers of the deployment tests: the code location loaded under a chosen environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def probe_definitions(env: dict[str, str], expression: str) -> object:
    """Import ``assets.definitions`` in a fresh interpreter under ``env`` (its executor and
    clients are chosen at import) and return the JSON value of ``expression`` over ``defs``."""
    code = f"import json\nfrom assets.definitions import defs\nprint(json.dumps({expression}))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])

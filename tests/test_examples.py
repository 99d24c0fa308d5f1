"""Every example runs as a user would run it, as a subprocess, and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(example: Path, tmp_path: Path):
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "AGENTMARKET_TRACING": "off"}
    done = subprocess.run([sys.executable, str(example)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "an example shows what it did"
    assert (example.read_text().lstrip().startswith('"""')), "open with what it shows"

"""The README's asyncio node with metrics runs as written (on a free port instead of 9191)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

if os.environ.get("CI") != "true":
    pytest.importorskip("prometheus_client", reason="the prometheus extra is not installed")


@pytest.mark.timeout(60)
def test_the_readme_asyncio_example_runs(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## An asyncio node with metrics", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    assert "metrics.serve(port=9191)" in code
    script = tmp_path / "node.py"
    script.write_text(code.replace("metrics.serve(port=9191)", "metrics.serve(port=0)"))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1", "SUCCESS"]

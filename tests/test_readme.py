"""Every ```python block of the README runs, from the repository root, as a reader would run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

BLOCKS = re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(encoding="utf-8"), re.M | re.S)


def test_the_readme_has_python_examples() -> None:
    assert BLOCKS, "README.md has no ```python block"


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_python_block_runs(number: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run([sys.executable, "-c", BLOCKS[number]], cwd=REPO, capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, f"README python block {number + 1} failed:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert result.stdout.strip(), "the example printed nothing"
    assert "'error'" not in result.stdout, f"the example's answer is an error:\n{result.stdout}"

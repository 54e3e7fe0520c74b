"""The README's code examples run as written (each in a fresh directory)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
BLOCKS = re.findall(r"```python\n(.*?)```", Path(README).read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(tmp_path, i):
    out = subprocess.run([sys.executable, "-c", BLOCKS[i]], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr

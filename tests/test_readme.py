"""The README's examples run as written: each Python block in a fresh
directory, all of them one after another in one directory (as a newcomer
follows them), and the shell quick start with the ``unstoppable`` command."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
TEXT = Path(README).read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)
SHELL = re.findall(r"```sh\n(.*?)```", TEXT, re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2 and len(SHELL) >= 1


def _python(code: str, cwd) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "<memory at" not in out.stdout, out.stdout
    return out.stdout


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(tmp_path, i):
    _python(BLOCKS[i], tmp_path)


def test_readme_examples_run_in_order_in_one_directory(tmp_path):
    outs = [_python(code, tmp_path) for code in BLOCKS]
    assert "b'seat-12' b'reserved'" in outs[0]
    last = outs[1].strip().splitlines()[-1]            # the replay found what was sent
    assert last.startswith("[(0, b'reserved')") or "b'reserved'" in last, outs[1]


@pytest.mark.parametrize("i", range(len(SHELL)))
def test_readme_shell_quick_start(tmp_path, i):
    script = f'unstoppable() {{ "{sys.executable}" -m unstoppable "$@"; }}\nset -e\n' + SHELL[i]
    env = {k: v for k, v in os.environ.items() if k != "UNSTOPPABLE_LOG"}
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    if "seat-1:reserved" in SHELL[i]:
        lines = out.stdout.splitlines()
        assert sum(line.endswith(" seat-1=reserved") for line in lines) == 1, out.stdout
        assert any("billing" in line for line in lines) and "dry run: nothing changed" in out.stdout

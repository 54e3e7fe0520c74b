"""Run the ``unstoppable`` command line as a real subprocess (shared by the tests in tests/cli)."""
from __future__ import annotations

import os
import subprocess
import sys


def cli(*args, stdin=None, log=None, ok=True, env=None, timeout=120, text=True):
    """Run ``python -m unstoppable ARGS [--log LOG]``; never a traceback; exit 0 when ``ok``."""
    cmd = [sys.executable, "-m", "unstoppable", *map(str, args)]
    if log is not None:
        cmd += ["--log", str(log)]
    e = {k: v for k, v in os.environ.items() if k != "UNSTOPPABLE_LOG"}
    e.update(env or {})
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=text, timeout=timeout, env=e)
    err = r.stderr if text else r.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    if ok:
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r


def bad(*args, code=1, **kw) -> str:
    """A command that must fail with exit ``code`` and exactly one line of error."""
    r = cli(*args, ok=False, **kw)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unstoppable: error: "), r.stderr
    return lines[0]

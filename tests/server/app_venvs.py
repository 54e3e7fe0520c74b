"""Virtualenvs for the third-party apps tests/server/test_apps.py runs.

quixstreams pins confluent-kafka < 2.13, older than the one the rest of the
tests use, so each app gets a virtualenv of its own, built once from the
``apps`` extra of pyproject.toml and kept in ``$UNSTOPPABLE_APPS_VENVS``
(default ``~/.cache/unstoppable/apps``). ``.ci/run`` builds them before the
tests: ``python tests/server/app_venvs.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APPS = ("quixstreams", "faust-streaming")


def venvs_dir() -> str:
    return os.environ.get("UNSTOPPABLE_APPS_VENVS",
                          os.path.join(os.path.expanduser("~"), ".cache", "unstoppable", "apps"))


def requirement(app: str) -> str:
    """The ``apps`` extra's requirement for ``app``."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["apps"]
    for req in extra:
        if req.split(">")[0].split("=")[0].split("<")[0].strip() == app:
            return req
    raise KeyError(f"pyproject.toml's apps extra has no requirement for {app}")


def app_python(app: str) -> str:
    """The python of ``app``'s virtualenv, built now if it is not there.
    Raises RuntimeError with pip's output when it cannot be built."""
    req = requirement(app)
    path = os.path.join(venvs_dir(), app)
    py = os.path.join(path, "bin", "python")
    marker = os.path.join(path, "installed.txt")
    try:
        with open(marker) as f:
            if f.read() == req:
                return py
    except FileNotFoundError:
        pass
    subprocess.run([sys.executable, "-m", "venv", "--clear", path], check=True)
    r = subprocess.run([py, "-m", "pip", "install", "-q", req], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"pip install {req} into {path} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    with open(marker, "w") as f:
        f.write(req)
    return py


if __name__ == "__main__":
    for a in APPS:
        print(a, app_python(a))

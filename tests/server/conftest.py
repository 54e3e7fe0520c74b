"""A real server in a subprocess (``python -m unstoppable.server``) on a free port."""
from __future__ import annotations

import pytest

pytest.importorskip("kio", reason="the server needs kio (Python >= 3.11): pip install '.[server]'")

from server_util import ServerProcess  # noqa: E402


@pytest.fixture
def server(tmp_path):
    s = ServerProcess(tmp_path / "log").start()
    yield s
    if s.proc.poll() is None:
        s.stop()

"""Shared fixtures. The first thing this does is prove the compiled core is
what runs: a broken build must not pass the suite on some fallback."""
import importlib.machinery
import os

import pytest

import unstoppable
from unstoppable._core import batch, delivery, hashing, segment

for _mod in (batch, delivery, hashing, segment):
    assert _mod.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), (
        f"{_mod.__name__} was loaded from {_mod.__file__}, not a compiled extension")
assert hashing.crc32c(b"123456789") == 0xE3069283


@pytest.fixture
def log_dir(tmp_path):
    return tmp_path / "log"


@pytest.fixture
def log(log_dir):
    lg = unstoppable.Log(log_dir)
    yield lg
    lg.close()


def pytest_report_header(config):
    return [f"unstoppable {unstoppable.__version__}: compiled core at "
            f"{os.path.dirname(batch.__file__)}, crc32c hardware={hashing.crc32c_hardware()}"]

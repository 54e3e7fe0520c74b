"""Fuzzing in a child process: the batch decoder, the segment scanner and
readers, the index loaders (checked against a plain-Python reference), whole
partitions with damaged files, producer snapshots and group offset files.

A child that dies of a signal (a segfault) or runs past its time (a loop) fails
the test with the input it was working on. ``fuzz_atheris.py`` runs the same
targets under atheris by hand."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# Examples per target in CI, as a share of Scale.fuzz_examples (the partition
# target opens a whole log per input).
SHARE = {"decode": 1.0, "segment": 1.0, "index": 1.0, "partition": 0.2, "snapshot": 0.5,
         "offsets": 0.3}


@pytest.mark.parametrize("target", list(SHARE))
def test_fuzz_target(target, tmp_path, figures, scale):
    examples = max(50, int(scale.fuzz_examples * SHARE[target]))
    last = tmp_path / "last-input.pickle"
    seed = int.from_bytes(os.urandom(4), "little")
    cmd = [sys.executable, "-X", "faulthandler=0", os.path.join(HERE, "fuzz_targets.py"),
           target, str(examples), str(seed), str(last)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60 + examples * 0.2)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{target} (seed {seed}) ran past its time, on input "
                    f"{_last(last)!r}: an infinite loop?")
    if out.returncode < 0:
        pytest.fail(f"{target} (seed {seed}) was killed by signal {-out.returncode} on input "
                    f"{_last(last)!r}\n{out.stderr[-2000:]}")
    assert out.returncode == 0, f"{target} (seed {seed}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    n = json.loads(out.stdout.strip().splitlines()[-1])["examples"]
    assert n >= examples * 0.5, n     # hypothesis ran (nearly) all of them
    figures.add("fuzz_inputs", n)


def _last(path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        return None

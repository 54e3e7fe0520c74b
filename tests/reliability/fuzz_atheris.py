"""The fuzz targets of fuzz_targets.py under atheris (libFuzzer), run by hand,
not in CI:

    pip install atheris
    python tests/reliability/fuzz_atheris.py TARGET [libFuzzer options]
    python tests/reliability/fuzz_atheris.py decode -max_total_time=300 -max_len=4096
    python tests/reliability/fuzz_atheris.py partition -runs=20000 corpus_dir/

TARGET is one of decode, segment, index, partition, snapshot, offsets. The
Python code (unstoppable.storage, the loaders) is instrumented for coverage;
the compiled core is not (that needs a clang build with -fsanitize=fuzzer), so
for it libFuzzer mutates blindly. Bytes from libFuzzer are turned into each
target's input with atheris.FuzzedDataProvider. A crash stops the run with the
input saved as crash-<sha1>; reproduce with ``python fuzz_atheris.py TARGET
crash-<sha1>``. Run under ``python -X faulthandler=0`` to see a fault as the
signal libFuzzer reports rather than a faulthandler dump.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

with atheris.instrument_imports():
    import unstoppable.storage  # noqa: F401  (instrument the Python side of the log)
    import fuzz_targets as ft


def _decode(fdp):
    ft.target_decode(fdp.ConsumeBytes(fdp.remaining_bytes()))


def _segment(fdp):
    n = fdp.ConsumeIntInRange(0, 4096)
    data = fdp.ConsumeBytes(n)
    ints = [fdp.ConsumeIntInRange(0, len(data) + 8) for _ in range(2)]
    ft.target_segment((data, ints[0], ints[1], fdp.ConsumeIntInRange(-2, 1 << 20),
                       fdp.ConsumeIntInRange(-1, 1 << 20), fdp.ConsumeIntInRange(0, 1 << 40),
                       fdp.ConsumeBool()))


def _index(fdp):
    oi = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512))
    ti = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1024))
    ft.target_index((oi, ti, fdp.ConsumeIntInRange(0, 1 << 32), fdp.ConsumeIntInRange(0, 1 << 32),
                     fdp.ConsumeIntInRange(-(1 << 62), 1 << 62), fdp.ConsumeIntInRange(0, 128)))


def _partition(fdp):
    root, rel, files, expected = ft._partition_template()
    names = sorted(n for n in files if n != "lock")
    ops = []
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        name = names[fdp.ConsumeIntInRange(0, len(names) - 1)]
        kinds = (["reboot", "delete", "truncate", "garbage"] if name == "head" else
                 ["flip", "zero", "truncate", "append", "overwrite", "delete"])
        op = kinds[fdp.ConsumeIntInRange(0, len(kinds) - 1)]
        at = fdp.ConsumeIntInRange(0, max(len(files[name]), 1))
        blob = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64)) or b"\x01"
        ops.append((name, op, at, blob))
    ft.target_partition(ops)


def _snapshot(fdp):
    ft.target_snapshot(fdp.ConsumeBytes(fdp.remaining_bytes()))


def _offsets(fdp):
    ft.target_offsets(fdp.ConsumeBytes(fdp.remaining_bytes()))


TARGETS = {"decode": _decode, "segment": _segment, "index": _index, "partition": _partition,
           "snapshot": _snapshot, "offsets": _offsets}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    fn = TARGETS[sys.argv.pop(1)]
    ft.LAST = os.path.join(ft.WORK, "last-input.pickle")
    atexit.register(shutil.rmtree, ft.WORK, True)

    def one_input(data: bytes) -> None:
        fn(atheris.FuzzedDataProvider(data))

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

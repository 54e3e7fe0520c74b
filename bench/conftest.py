"""Shared workload generators and same-run baselines for the benchmarks.

Absolute throughput drifts a lot on shared machines (raw write() of 1 MiB
chunks was seen between 0.4 and 4.7 GB/s within minutes here), so every
benchmark measures its baseline in the same run, alternating with the subject,
and reports the ratio. Before each timed write the page cache is synced so that
writeback of the previous round does not throttle whichever runs next.
"""
from __future__ import annotations

import os
import random
import time

import pytest

VALUE_SIZE = 100


def make_values(n: int, size: int = VALUE_SIZE, seed: int = 1) -> list[bytes]:
    """n distinct pseudo-random values of `size` bytes (cheap to generate)."""
    rnd = random.Random(seed)
    block = rnd.randbytes(size * 1024)
    return [block[(i % 1000) * size // 10:(i % 1000) * size // 10 + size - 8] + i.to_bytes(8, "little")
            for i in range(n)]


def raw_write_gbps(path: str, total_bytes: int, chunk: int = 1 << 20) -> float:
    """Baseline: write() of `chunk`-sized buffers into a fresh file."""
    buf = os.urandom(chunk)
    os.sync()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        done = 0
        while done < total_bytes:
            done += os.write(fd, buf)
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)
    return done / dt / 1e9


def memcpy_gbps(nbytes: int = 256 << 20, rounds: int = 3) -> float:
    """Baseline: memcpy bandwidth (a bytearray slice assignment is one memcpy)."""
    src = bytearray(os.urandom(1 << 20)) * (nbytes >> 20)
    dst = bytearray(len(src))
    dst[:] = src  # fault the pages in first
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        dst[:] = src
        best = max(best, len(src) / (time.perf_counter() - t0) / 1e9)
    return best


def naive_file_loop(path: str, values: list[bytes]) -> tuple[float, float]:
    """Baseline: the naive buffered Python loop, one call per event.

    Returns (append events/s, read events/s)."""
    n = len(values)
    os.sync()
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        w = f.write
        for v in values:
            w(len(v).to_bytes(4, "little"))
            w(v)
    wdt = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = 0
    with open(path, "rb") as f:
        r = f.read
        while True:
            h = r(4)
            if not h:
                break
            r(int.from_bytes(h, "little"))
            got += 1
    rdt = time.perf_counter() - t0
    os.unlink(path)
    assert got == n
    return n / wdt, n / rdt


@pytest.fixture(scope="session")
def report():
    """Collects 'name: figure (baseline, ratio)' lines and prints them at the end."""
    lines: list[str] = []
    yield lines
    if lines:
        print("\n\n==== unstoppable benchmark figures ====")
        for line in lines:
            print(line)

"""Figures of the reliability suite, and its CI/soak switch.

Every test of the suite reports what it did to the session's ``figures``
(kills survived, acknowledged records checked, records lost, ...). At the end
pytest prints them and writes them as JSON to
``<pytest basetemp>/reliability-figures.json`` (or to ``$UNSTOPPABLE_FIGURES``).

``UNSTOPPABLE_SOAK=1`` makes the runs longer (the ``scale`` fixture): more
kills, more fuzz inputs, a longer many-process run. Without it the suite is
sized to stay around three minutes on a two-core CI machine.
"""
from __future__ import annotations

import json
import os
import platform
import time

import pytest

SOAK = os.environ.get("UNSTOPPABLE_SOAK", "") not in ("", "0")

_KEY = pytest.StashKey["Figures"]()

# name -> (what it counts, how values combine)
FIGURES = {
    "kills_survived": ("processes SIGKILLed at random moments, and the log checked after", "sum"),
    "acked_records_checked": ("acknowledged records found present and intact (distinct)", "sum"),
    "records_lost": ("acknowledged records missing or different (must be 0)", "sum"),
    "duplicates_appended": ("records written twice by a producer (must be 0)", "sum"),
    "effects_checked": ("consumed records whose effect was checked in SQLite", "sum"),
    "effects_lost": ("acknowledged records never applied by a consumer (must be 0)", "sum"),
    "effects_applied_twice": ("records whose effect was committed twice (must be 0)", "sum"),
    "kills_between_effect_and_commit": ("consumer kills inside the effect transaction", "sum"),
    "redeliveries": ("records handed out again after a consumer died (allowed)", "sum"),
    "torn_tail_cases": ("damaged tails reopened (position x damage x boot)", "sum"),
    "sealed_corruption_cases": ("damaged sealed segments read and verified", "sum"),
    "fuzz_inputs": ("arbitrary inputs given to the decoder, scanner and index loaders", "sum"),
    "disk_full_cases": ("appends, rolls, commits and opens refused for lack of space", "sum"),
    "truncations_under_readers": ("files truncated under live readers and writers", "sum"),
    "sigbus_absorbed": ("SIGBUS faults turned into errors instead of deaths", "sum"),
    "bad_inputs_refused": ("hostile API and CLI inputs refused with a specific error", "sum"),
    "longest_recovery_seconds": ("longest partition recovery (partition.recovery.seconds)", "max"),
    "longest_reopen_seconds": ("longest open of a whole log after a kill (wall clock)", "max"),
}


class Figures:
    """Counters shared by the whole session."""

    def __init__(self):
        self.values = {name: 0 for name in FIGURES}
        self.started = time.time()
        self.json_path = ""

    def add(self, name: str, n: int = 1) -> None:
        assert FIGURES[name][1] == "sum", name
        self.values[name] += n

    def max(self, name: str, v: float) -> None:
        assert FIGURES[name][1] == "max", name
        if v > self.values[name]:
            self.values[name] = v

    def as_dict(self) -> dict:
        out = dict(self.values)
        out["longest_recovery_seconds"] = round(out["longest_recovery_seconds"], 4)
        out["longest_reopen_seconds"] = round(out["longest_reopen_seconds"], 4)
        out["soak"] = SOAK
        out["wall_seconds"] = round(time.time() - self.started, 1)
        out["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        return out


@pytest.fixture(scope="session")
def figures(request, tmp_path_factory) -> Figures:
    f = request.config.stash.get(_KEY, None)
    if f is None:
        f = request.config.stash[_KEY] = Figures()
        f.json_path = os.environ.get("UNSTOPPABLE_FIGURES") or os.path.join(
            str(tmp_path_factory.getbasetemp()), "reliability-figures.json")
    return f


class Scale:
    """How long each kind of run lasts: CI-length by default, long with UNSTOPPABLE_SOAK=1."""

    soak = SOAK
    producer_kills = 500 if SOAK else 50          # per acks mode
    consumer_kills = 200 if SOAK else 20
    many_seconds = 180.0 if SOAK else 20.0
    fuzz_examples = 20000 if SOAK else 2500       # per fuzz target
    truncation_rounds = 300 if SOAK else 40


@pytest.fixture(scope="session")
def scale() -> Scale:
    return Scale()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    f = config.stash.get(_KEY, None)
    if f is None:
        return
    d = f.as_dict()
    tr = terminalreporter
    tr.section("reliability figures" + (" (soak)" if SOAK else ""))
    w = max(len(k) for k in FIGURES)
    for name, (what, _) in FIGURES.items():
        v = d[name]
        tr.write_line(f"{name:<{w}}  {v:>12}  {what}")
    path = f.json_path
    with open(path, "w") as fh:
        json.dump(d, fh, indent=2, sort_keys=True)
        fh.write("\n")
    tr.write_line(f"figures written to {path}")

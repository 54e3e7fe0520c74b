"""A subset of librdkafka's own test suite against a real server
(librdkafka_suite.py). Needs a built librdkafka source tree named by
$LIBRDKAFKA_SRC: fetching and building it takes about ten minutes on two
cores, more than this suite's budget, so it is not done here."""
from __future__ import annotations

import os

import pytest

from librdkafka_suite import DEFAULT_TESTS, run

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not os.environ.get("LIBRDKAFKA_SRC"),
                    reason="set LIBRDKAFKA_SRC to a built librdkafka source tree")
def test_librdkafka_suite_subset():
    results = run(os.environ["LIBRDKAFKA_SRC"], DEFAULT_TESTS)
    bad = {t: r for t, r in results.items() if r[0] not in ("PASSED", "SKIPPED")}
    assert not bad, "\n".join(f"---- {t} {s}\n{tail}" for t, (s, tail) in bad.items())

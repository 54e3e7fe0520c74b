"""The I/O-free parts of durability and recovery, checked on a real partition's
state: the round planner's answers, and which recovery a head calls for."""
import errno

import pytest

from unstoppable._core.segment import new_head_state
from unstoppable.errors import LogClosedError, UnstoppableError
from unstoppable.storage.durability import WAIT, CommitRounds
from unstoppable.storage.recovery import BOOT_ID, choose_mode, head_consistent


@pytest.fixture
def part(log):
    p = log.create_topic("t", partitions=1).partition(0)
    p.append([b"a", b"b", b"c"])
    return p


def test_a_request_waits_until_its_offsets_are_durable(part):
    rounds = CommitRounds()
    ds = part.durability
    assert rounds.outcome(ds, 3, rounds.round_no) is WAIT
    part.flush()
    assert rounds.outcome(ds, 3, rounds.round_no) is None
    assert rounds.outcome(ds, 2, 0) is None


def test_a_round_that_cannot_start_fails_only_the_requests_made_before_it(part):
    rounds = CommitRounds()
    ds = part.durability
    before = rounds.round_no
    rounds.want(ds, 3)
    no, states = rounds.take()
    assert states == [ds] and not rounds.pending
    cause = OSError(errno.EMFILE, "too many open files")
    rounds.failed_to_start(no, {ds: cause})
    err = rounds.outcome(ds, 3, before)
    assert isinstance(err, UnstoppableError) and "could not sync t/0" in str(err)
    assert err.__cause__ is cause
    assert ds.failed is None                       # not failed for good: no fsyncgate here
    assert rounds.outcome(ds, 3, no) is WAIT       # made during that round: the next one serves it


def test_closed_failed_or_stopped_partitions_answer_with_the_reason(part):
    rounds = CommitRounds()
    ds = part.durability
    err = rounds.outcome(ds, 3, 0, stopped=True)
    assert isinstance(err, LogClosedError) and "before offset 3" in str(err)
    ds.failed = OSError(errno.EIO, "fdatasync failed")
    err = rounds.outcome(ds, 3, 0)
    assert isinstance(err, UnstoppableError) and err.__cause__ is ds.failed
    ds.failed = None


def test_the_head_decides_the_recovery_mode():
    st = new_head_state(end_offset=10, active_size=500, ckpt_end_offset=10, ckpt_size=500,
                        boot_id=BOOT_ID)
    assert head_consistent(st)
    assert choose_mode(st, [0], False) == "tail"
    assert choose_mode(st, [0], False, boot_id=b"\1" * 16) == "checkpoint"
    assert choose_mode(st, [0], True) == "rebuild"          # forced (a torn head)
    assert choose_mode(None, [0], False) == "rebuild"       # unreadable
    assert choose_mode(st, [100], False) == "rebuild"       # its active segment is gone
    torn = new_head_state(end_offset=0, active_size=500, boot_id=BOOT_ID)
    assert not head_consistent(torn)                        # data but no offsets
    assert choose_mode(torn, [0], False) == "rebuild"

"""Every position of a consumer, in one place (as aiokafka's
consumer/subscription_state.py): per assigned partition where the next
record to hand out is, what was committed, and what the application has
moved past; plus the cursor ``__anext__`` hands records out from.

Three offsets per partition, all derived here:

* ``position(tp)``: the next record the consumer will hand out;
* ``consumed(tp)``: the position after what the application has moved past.
  A record counts as handled once the next ``__anext__``/``getmany`` call
  starts (:meth:`Positions.next_call`), so it lags ``position`` by what the
  last call handed out: all records of the last ``getmany`` for that
  partition, or the last record ``__anext__`` returned;
* ``committed``: the last offset known committed for the consumer's group.

The cursor is the chunk of one partition's fetched records that
``__anext__`` hands out one at a time. While it is on a partition, that
partition's position is the cursor's (``start + i``); :meth:`next_call`
folds it back into the partition's state. Nothing here does I/O.
"""
from __future__ import annotations

import bisect

from unstoppable.client._types import TopicPartition
from unstoppable.errors import NoOffsetForPartitionError, NotAssignedError

__all__ = ["PartitionState", "Cursor", "Positions"]


class PartitionState:
    """What the consumer knows about one assigned partition."""

    __slots__ = ("position", "committed", "initial", "held")

    def __init__(self, position, committed):
        self.position = position      # next offset to hand out (None: unknown, reset "error")
        self.committed = committed    # last committed offset known (None: none)
        self.initial = position       # where consumption started (auto-commit skips unmoved ones)
        self.held = None              # first offset the last getmany handed out (not moved past yet)

    def moved(self, pos) -> bool:
        """Whether committing ``pos`` would record progress."""
        if self.committed is not None:
            return pos != self.committed
        return pos != self.initial


class Cursor:
    """Records of one partition being handed out by ``__anext__``:
    ``records[i:end]`` are still to come; ``start`` is the first's offset."""

    __slots__ = ("records", "tp", "start", "i", "end")

    def __init__(self):
        self.records: list = []
        self.tp: TopicPartition | None = None
        self.start = 0
        self.i = 0
        self.end = 0


class Positions:
    """The positions of a consumer's assigned partitions, the cursor, and
    the round-robin order of fetches."""

    __slots__ = ("states", "order", "cursor", "_rr")

    def __init__(self):
        self.states: dict[TopicPartition, PartitionState] = {}
        self.order: list[TopicPartition] = []
        self.cursor = Cursor()
        self._rr = 0

    # -- assignment

    def assign(self, tp: TopicPartition, position, committed) -> None:
        """Start tracking ``tp`` at ``position`` (None: unknown)."""
        if tp not in self.states:
            bisect.insort(self.order, tp)
        self.states[tp] = PartitionState(position, committed)

    def remove(self, tp: TopicPartition) -> None:
        """Stop tracking ``tp`` (revoked), the cursor's records of it included."""
        if self.cursor.tp == tp:
            self.fold()
        del self.states[tp]
        self.order.remove(tp)

    def clear(self) -> None:
        self.states.clear()
        self.order = []
        self._drop_cursor()

    def __contains__(self, tp) -> bool:
        return tp in self.states

    def state(self, tp) -> tuple[TopicPartition, PartitionState]:
        """``(tp, its state)``; NotAssignedError for a partition not held."""
        tp = TopicPartition(*tp)
        st = self.states.get(tp)
        if st is None:
            raise NotAssignedError(f"{tp.topic}/{tp.partition} is not assigned to this consumer "
                                   f"(assigned: {sorted(self.states)})")
        return tp, st

    # -- the three offsets

    def known(self, tp):
        """The position of an assigned ``tp``, or None while it has none."""
        c = self.cursor
        if c.tp == tp:
            return c.start + c.i
        return self.states[tp].position

    def position(self, tp) -> int:
        """The next offset to hand out; NoOffsetForPartitionError while there is none."""
        pos = self.known(tp)
        if pos is None:
            raise NoOffsetForPartitionError(
                f"{tp.topic}/{tp.partition} has no position yet (no committed offset and "
                "auto_offset_reset='error'); seek() to choose one")
        return pos

    def consumed(self, tp):
        """The position after what the application has moved past (None
        without a position or for a partition not held)."""
        st = self.states.get(tp)
        if st is None:
            return None
        pos = self.known(tp)
        if pos is None:
            return None
        if st.held is not None:
            pos = min(pos, st.held)
        c = self.cursor
        if c.tp == tp and c.i > 0:
            pos = min(pos, c.start + c.i - 1)
        return pos

    def moved(self) -> dict:
        """``{tp: position}`` of the partitions whose position would record
        progress if committed."""
        out = {}
        for tp, st in self.states.items():
            pos = self.known(tp)
            if pos is not None and st.moved(pos):
                out[tp] = pos
        return out

    # -- moving them

    def next_call(self) -> None:
        """A new ``__anext__``/``getmany`` call: what was handed out before is handled."""
        self.fold()
        for st in self.states.values():
            st.held = None

    def fold(self) -> None:
        """Bring the cursor's partition up to what it handed out; drop the cursor."""
        c = self.cursor
        if c.tp is not None:
            st = self.states.get(c.tp)
            if st is not None and c.i > 0:
                st.position = c.start + c.i
            self._drop_cursor()

    def _drop_cursor(self) -> None:
        c = self.cursor
        c.tp = None
        c.records = []
        c.i = c.end = 0

    def hand_out_one(self, tp: TopicPartition, records: list):
        """Put the cursor on ``records`` of ``tp`` and hand out the first."""
        c = self.cursor
        c.records = records
        c.tp = tp
        c.start = records[0].offset
        c.i = 1
        c.end = len(records)
        return records[0]

    def hand_out_all(self, tp: TopicPartition, records: list) -> None:
        """``records`` of ``tp`` go out at once (getmany)."""
        st = self.states[tp]
        st.position = records[-1].offset + 1
        st.held = records[0].offset

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Hand out ``tp``'s records from ``offset`` on."""
        if self.cursor.tp == tp:
            self._drop_cursor()
        st = self.states[tp]
        st.held = None
        st.position = offset

    def stop(self, tps) -> None:
        """Hand out no more of the cursor's records if it is on one of ``tps``
        (they are being given up: the safe point revokes them)."""
        c = self.cursor
        if c.tp in tps:
            c.end = c.i

    def committed(self, offsets: dict) -> None:
        """Offsets were committed."""
        for tp, off in offsets.items():
            st = self.states.get(tp)
            if st is not None:
                st.committed = off

    # -- fetch order

    def fetch_order(self) -> list:
        """The assigned partitions, round-robin from where the last fetch stopped."""
        order = self.order
        n = len(order)
        if not n:
            return []
        k = self._rr % n
        return order[k:] + order[:k]

    def fetched_up_to(self, tp: TopicPartition) -> None:
        """The next round starts after ``tp``."""
        self._rr = (self.order.index(tp) + 1) % len(self.order)

"""Zero-copy numpy views of a partition's index files, and vectorized time lookups.

``Partition.offset_index()``, ``Partition.time_index()`` and
``Partition.offsets_for_times()`` delegate here; numpy is imported only when
one of them is first called (``pip install 'unstoppable[numpy]'``).

A view is ``numpy.frombuffer`` over the read-only shared mapping the partition
already uses for its lookups (docs/FORMAT.md §5, §6): no entry is copied, and
the array holds a reference to the mapping, so the mapping stays alive as long
as the array does. Retention unlinks a segment's files; a mapping of an
unlinked file stays valid (the kernel frees the inode when the last mapping
goes), so a view held across retention keeps reading the entries it was
created with and never points at freed memory. Entries below a view's length
never change while the segment exists: appends only add entries past the
count the view was made with, a roll truncates to exactly that count, and a
sealed index that needs rebuilding is replaced by a new file renamed over the
old one.
"""
from __future__ import annotations

import bisect

from unstoppable._core.segment import find_time, read_batches
from unstoppable._numpy import require
from unstoppable.errors import CorruptLogError, OffsetOutOfRangeError

np = require()

#: One offset-index entry (``<base>.index``, FORMAT.md §5), little-endian, 8 bytes.
OFFSET_INDEX_DTYPE = np.dtype([("relative_offset", "<u4"), ("position", "<u4")])
#: One time-index entry (``<base>.timeindex``, FORMAT.md §6), little-endian, 16 bytes.
#: ``timestamp`` is the entry's ``max_timestamp``: the largest record timestamp
#: in the segment up to and including the batch at ``position``.
TIME_INDEX_DTYPE = np.dtype([("timestamp", "<i8"), ("relative_offset", "<u4"), ("position", "<u4")])

assert OFFSET_INDEX_DTYPE.itemsize == 8 and TIME_INDEX_DTYPE.itemsize == 16


class IndexArray(np.ndarray):
    """A read-only structured array over one segment's mapped index file.

    Fields: ``relative_offset``, ``position`` (offset index) or ``timestamp``,
    ``relative_offset``, ``position`` (time index). ``base_offset`` is the
    segment's base offset (``base_offset + relative_offset`` is the offset of
    the batch at ``position``), ``segment`` the path of its ``.log`` file.
    Slices and fields of it are views too and carry the same attributes.
    """

    base_offset: int
    segment: str | None

    def __array_finalize__(self, obj):
        self.base_offset = getattr(obj, "base_offset", 0)
        self.segment = getattr(obj, "segment", None)

    def offsets(self):
        """offsets() -> numpy.ndarray[int64]

        The absolute offsets of the indexed batches (a new array)."""
        return self["relative_offset"].astype(np.int64) + self.base_offset


class PartitionIndex(tuple):
    """The index views of every segment of a partition, oldest first: a tuple
    of :class:`IndexArray`, each zero-copy over its own mapped file."""

    kind: str

    def __new__(cls, views, kind: str):
        self = super().__new__(cls, views)
        self.kind = kind
        return self

    @property
    def bases(self):
        """The segments' base offsets, as an int64 array."""
        return np.array([v.base_offset for v in self], dtype=np.int64)

    @property
    def entries(self) -> int:
        """Total number of entries over all segments."""
        return sum(len(v) for v in self)

    def concatenate(self):
        """concatenate() -> numpy.ndarray

        One structured array of all segments' entries (a copy, unlike the
        views): fields ``offset`` (absolute, int64), ``segment`` (the
        segment's base offset), ``position``, and ``timestamp`` for a time
        index."""
        fields = [("offset", "<i8"), ("segment", "<i8"), ("position", "<u4")]
        if self.kind == "time":
            fields.append(("timestamp", "<i8"))
        out = np.empty(self.entries, dtype=fields)
        i = 0
        for v in self:
            j = i + len(v)
            out["offset"][i:j] = v.offsets()
            out["segment"][i:j] = v.base_offset
            out["position"][i:j] = v["position"]
            if self.kind == "time":
                out["timestamp"][i:j] = v["timestamp"]
            i = j
        return out


def _view(mapping, count: int, dtype, base: int, path: str) -> IndexArray:
    if count == 0:
        arr = np.empty(0, dtype=dtype)
        arr.flags.writeable = False
    else:
        # The mapping is PROT_READ and exports a read-only buffer: the array
        # is read-only, and numpy refuses to make it writeable.
        arr = np.frombuffer(mapping, dtype=dtype, count=count)
    v = arr.view(IndexArray)
    v.base_offset = base
    v.segment = path
    return v


def _segment_view(part, seg, st, kind: str) -> IndexArray:
    _, oi_n, ti_n = part.catalog.limits(seg, st)
    if kind == "offset":
        m = seg.oi_map(oi_n) if oi_n else None
        return _view(m, oi_n, OFFSET_INDEX_DTYPE, seg.base, seg.path)
    m = seg.ti_map(ti_n) if ti_n else None
    return _view(m, ti_n, TIME_INDEX_DTYPE, seg.base, seg.path)


def index_view(part, kind: str, segment=None):
    """The views behind ``Partition.offset_index`` and ``Partition.time_index``."""
    part._check_open()
    if segment is not None and (isinstance(segment, bool) or not isinstance(segment, int)):
        raise TypeError(f"segment must be a segment's base offset (an int) or None, "
                        f"got {type(segment).__name__}")
    st = part.head_state()
    part.catalog.refresh(st)
    bases = [b for b in part.catalog.bases if b <= st.active_base]
    if segment is not None:
        if segment not in bases and segment < st.start_offset:
            raise OffsetOutOfRangeError(
                f"segment {segment} of {part.topic}/{part.index} is below its start offset "
                f"{st.start_offset}: deleted by retention")
        if segment not in bases:
            i = bisect.bisect_right(bases, segment) - 1
            hint = f"; offset {segment} is in segment {bases[i]}" if i >= 0 and segment < st.end_offset else ""
            raise ValueError(f"{segment} is not the base offset of a segment of "
                             f"{part.topic}/{part.index}{hint}")
        try:
            seg = part.catalog.get(segment)
        except FileNotFoundError:
            raise OffsetOutOfRangeError(
                f"segment {segment} of {part.topic}/{part.index} was deleted by retention") from None
        return _segment_view(part, seg, st, kind)
    views = []
    for base in bases:
        try:
            seg = part.catalog.get(base)
        except FileNotFoundError:
            continue  # deleted by retention since the head was read
        views.append(_segment_view(part, seg, st, kind))
    return PartitionIndex(views, kind)


_INT64_MAX = np.iinfo(np.int64).max


def as_timestamps(ts):
    """``ts`` as an int64 array of milliseconds, or one clear error."""
    if isinstance(ts, (str, bytes)):
        raise TypeError(f"timestamps must be an array of int milliseconds, got {type(ts).__name__}")
    a = np.asarray(ts)
    kind = a.dtype.kind
    if kind == "M":
        ms = a.astype("datetime64[ms]")
        bad = np.isnat(ms)
        if bad.any():
            raise ValueError(f"timestamps hold NaT at index {int(np.flatnonzero(bad.ravel())[0])}")
        return ms.astype(np.int64)
    if kind == "f":
        bad = np.isnan(a)
        if bad.any():
            raise ValueError(f"timestamps hold NaN at index {int(np.flatnonzero(bad.ravel())[0])}; "
                             "they must be int milliseconds")
        raise TypeError(f"timestamps must be int milliseconds, got dtype {a.dtype}")
    if kind == "u":
        if a.size and a.max() > _INT64_MAX:
            raise ValueError(f"timestamps above {_INT64_MAX} ms do not fit int64")
        return a.astype(np.int64)
    if kind == "i":
        return a.astype(np.int64, copy=False)
    raise TypeError(f"timestamps must be int milliseconds, got dtype {a.dtype}"
                    + (" (a None or a non-int among them?)" if kind == "O" else ""))


def offsets_for_times(part, ts):
    """The lookups behind ``Partition.offsets_for_times``: for every
    timestamp the result of ``part.offset_for_time``, with -1 for None.

    The queries are sorted and deduplicated; per segment one
    ``np.searchsorted`` over the time-index view gives each query its start
    batch (the entry ``time_index_below`` would find), and the C ``find_time``
    scans from there, as the scalar lookup does."""
    part._check_open()
    q_all = as_timestamps(ts)
    shape = q_all.shape
    out = np.full(q_all.size, -1, dtype=np.int64)
    if q_all.size == 0:
        return out.reshape(shape)
    q, inverse = np.unique(q_all.ravel(), return_inverse=True)
    res = np.full(q.size, -1, dtype=np.int64)
    st = part.head_state()
    if st.end_offset == st.start_offset:
        return out.reshape(shape)
    part.catalog.refresh(st)
    pending = np.arange(q.size)
    for base in list(part.catalog.bases):
        if pending.size == 0:
            break
        if base > st.active_base:
            break  # rolled after ``st`` was read, as in offset_for_time
        try:
            seg = part.catalog.get(base)
        except FileNotFoundError:
            continue  # removed by retention meanwhile
        limit, oi_n, ti_n = part.catalog.limits(seg, st)
        if limit == 0:
            continue
        try:
            cand = pending
            if seg.base != st.active_base:
                max_ts = part.catalog.max_ts(seg, limit, oi_n)
                cand = pending[q[pending] <= max_ts]   # the others are newer than all of it
                if cand.size == 0:
                    continue
            qc = q[cand]
            starts = np.zeros(cand.size, dtype=np.int64)
            ends = np.full(cand.size, limit, dtype=np.int64)
            if ti_n:
                ti = np.frombuffer(seg.ti_map(ti_n), dtype=TIME_INDEX_DTYPE, count=ti_n)
                k = np.searchsorted(ti["timestamp"], qc, side="left") - 1
                tpos = ti["position"].astype(np.int64)
                has = k >= 0
                pos = tpos[np.where(has, k, 0)]
                starts = np.where(has & (pos < limit), pos, 0)
                # The entry after the one found has max_timestamp >= the query:
                # the answer is in its batch or before it.
                nk = np.minimum(k + 1, ti_n - 1)
                ends = np.where((k + 1 < ti_n) & (tpos[nk] < limit), tpos[nk], limit)
            found = _scan(part, seg.data(limit), limit, qc, starts, ends)
        except CorruptLogError as e:
            raise part._wrap_corrupt(e, seg) from None
        hit = found >= 0
        res[cand[hit]] = np.maximum(found[hit], st.start_offset)
        pending = np.setdiff1d(pending, cand[hit], assume_unique=True)
    out[:] = res[inverse.ravel()]
    return out.reshape(shape)


# A group of queries that start at the same batch is answered either by
# find_time per query (a C scan from the start batch, CRC-checking every batch
# it passes, up to the batch of the next time-index entry) or by decoding those
# batches once (a Python object per record, ~0.15 us each, plus a few us per
# batch). Decoding wins for several queries over large batches; over small
# batches (about ``index_interval_bytes`` between entries) find_time is cheap.
_WALK_MIN_QUERIES = 8
_WALK_MIN_WINDOW = 32 << 10   # bytes from the start batch to the end of the next entry's batch


def _scan(part, m, limit: int, qc, starts, ends):
    """First offset with timestamp >= qc[i] at or after the batch at
    starts[i] (-1 when none up to ``limit``); ``qc`` is sorted."""
    found = np.full(qc.size, -1, dtype=np.int64)
    order = np.argsort(starts, kind="stable")   # keeps each group's queries sorted
    _, first = np.unique(starts[order], return_index=True)
    groups = np.split(order, first[1:])
    cache: dict[int, list] = {}
    for idx in groups:
        if idx.size == 0:
            continue
        start = int(starts[idx[0]])
        end = int(ends[idx[0]])
        window = end - start + (_batch_length(m, end) if end < limit else 0)
        if idx.size < _WALK_MIN_QUERIES or window < _WALK_MIN_WINDOW:
            for i in idx.tolist():
                found[i] = find_time(m, start, limit, int(qc[i]))
            continue
        rem = idx
        pos = start
        while rem.size and pos < limit:
            c = cache.get(pos)
            if c is None:
                bs, nxt = read_batches(m, pos, limit, -1, 1, part.topic, part.index)
                b = bs[0]
                c = cache[pos] = [nxt, b.base_offset, b.max_timestamp, b]
            nxt, base, bmax = c[0], c[1], c[2]
            if bmax >= qc[rem[0]]:
                if not isinstance(c[3], np.ndarray):
                    b = c[3]
                    ts = np.fromiter((r.timestamp for r in b), dtype=np.int64, count=len(b))
                    c[3] = np.maximum.accumulate(ts)
                run = c[3]
                qr = qc[rem]
                j = np.searchsorted(run, qr, side="left")
                ok = (j < run.size) & (qr <= bmax)   # find_time skips a batch by its header
                found[rem[ok]] = base + j[ok]
                rem = rem[~ok]
            pos = nxt
    return found


def _batch_length(m, pos: int) -> int:
    """The ``length`` field of the batch header at ``pos`` (FORMAT.md §4)."""
    return int.from_bytes(m.view[pos + 8:pos + 12], "little")

"""A partition's segment files: :class:`Segment` (one ``.log`` file and its two
indexes, as this process has them open) and :class:`SegmentCatalog`, which
knows every segment of the partition, keeps at most ``OPEN_SEGMENTS`` sealed
ones open, and holds each sealed segment's facts (size, valid index entry
counts, largest timestamp) once, in a :class:`SealedFacts` record every reader
asks.

Readers take no partition lock: the catalog's own lock guards its tables for
the moments they change, never across I/O, and the sorted list of bases is
replaced, never changed in place, so a reader bisects a list it holds.
"""
from __future__ import annotations

import bisect
import collections
import os
import re
import threading

from unstoppable._core.segment import (
    BAD_RECORDS,
    OFFSET_ENTRY_SIZE,
    OFFSET_MISMATCH,
    TIME_ENTRY_SIZE,
    IndexBuilder,
    Mapping,
    batch_at_or_after,
    find_batch,
    offset_index_entry,
    offset_index_floor,
    offset_index_valid,
    scan,
    time_index_entry,
    time_index_valid,
)
from unstoppable.errors import CorruptLogError, OffsetOutOfRangeError, corrupt_from_code
from unstoppable.storage._fs import O_CLOEXEC, open_readonly, pwrite_all

__all__ = ["CLEANER_CHECKPOINT", "OPEN_SEGMENTS", "Segment", "SealedFacts", "SegmentCatalog", "segment_name",
           "segment_stem", "position_of"]

_SEGMENT_RE = re.compile(r"^(\d{20})\.log$")

#: The compactor's checkpoint in a partition directory (storage/compaction.py).
#: It exists from just before the first compacted segment is swapped in, so
#: its presence says that sealed segments may have gaps in their offsets.
CLEANER_CHECKPOINT = "cleaner-checkpoint.json"

# Sealed segments whose files one partition keeps open (3 descriptors and up
# to 3 mappings each) beyond the newest; the least recently used one past this
# is let go and opened again when next needed. Its facts stay known
# (``SegmentCatalog``), so opening it again costs a few syscalls.
OPEN_SEGMENTS = 16


def segment_name(base: int) -> str:
    return f"{base:020d}"


def segment_stem(dirpath: str, base: int) -> str:
    """The path of a segment's files without their extension (``.log``,
    ``.index``, ``.timeindex``, ``.producers``)."""
    return os.path.join(dirpath, segment_name(base))


class Segment:
    """One segment file and its two indexes, as seen by this process."""

    __slots__ = ("base", "path", "fd", "oi_fd", "ti_fd", "_map", "_oi_map", "_ti_map",
                 "_map_hint", "_oi_hint", "reserved_end", "ino")

    def __init__(self, dirpath: str, base: int, map_hint: int, oi_hint: int, create: bool = False,
                 readonly: bool = False):
        self.base = base
        stem = segment_stem(dirpath, base)
        self.path = stem + ".log"
        flags = os.O_RDWR | O_CLOEXEC | (os.O_CREAT if create else 0)
        self.fd = self.oi_fd = self.ti_fd = -1
        self._map = None
        self._oi_map = None
        self._ti_map = None
        try:
            for _attempt in range(5):
                if self._open_files(stem, flags, create, readonly):
                    break
                self.close()   # the compactor swapped the log meanwhile: again
            # Which file this is: the compactor may replace the one at this path.
            self.ino = os.fstat(self.fd).st_ino
        except BaseException:
            self.close()
            raise
        self.reserved_end = 0      # blocks reserved (preallocated) up to here, as far as we know
        self._map_hint = map_hint
        self._oi_hint = oi_hint

    def _open_files(self, stem: str, flags: int, create: bool, readonly: bool) -> bool:
        """Open the log and its indexes. A compaction's swap whose log was
        renamed in (no ``.log.cleaned`` left) while its indexes were not yet
        (a cleaner killed there, or between the renames) has them as
        ``.index.cleaned``/``.timeindex.cleaned``: those belong to this log
        (storage/compaction.py). False when the log at the path changed while
        this chose: the caller opens again."""
        if readonly:  # a read-only log: a missing index reads as empty
            self.fd = open_readonly(self.path)
        else:
            self.fd = os.open(self.path, flags, 0o644)
        names = [stem + ".index", stem + ".timeindex"]
        if not create and os.path.exists(stem + ".index.cleaned") \
                and not os.path.exists(stem + ".log.cleaned"):
            pending = []
            for n in names:
                try:
                    pending.append(os.open(n + ".cleaned",
                                           (os.O_RDONLY if readonly else os.O_RDWR) | O_CLOEXEC))
                except FileNotFoundError:   # renamed in meanwhile: the plain name is it
                    pending.append(-1)
            self.oi_fd, self.ti_fd = pending
        if readonly:
            if self.oi_fd < 0:
                self.oi_fd = open_readonly(names[0], missing_ok=True)
            if self.ti_fd < 0:
                self.ti_fd = open_readonly(names[1], missing_ok=True)
        else:
            if self.oi_fd < 0:
                self.oi_fd = os.open(names[0], os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
            if self.ti_fd < 0:
                self.ti_fd = os.open(names[1], os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
        try:
            return create or os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
        except FileNotFoundError:
            return True     # deleted (retention): reads of this one find out

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def data(self, need: int) -> Mapping:
        """A mapping that covers at least ``need`` bytes of the segment."""
        m = self._map
        if m is None or m.length < need:
            m = self._map = Mapping(self.fd, max(need, self._map_hint))
        return m

    def oi_map(self, entries: int) -> Mapping:
        need = entries * OFFSET_ENTRY_SIZE
        m = self._oi_map
        if m is None or m.length < need:
            m = self._oi_map = Mapping(self.oi_fd, max(need, self._oi_hint * OFFSET_ENTRY_SIZE))
        return m

    def ti_map(self, entries: int) -> Mapping:
        need = entries * TIME_ENTRY_SIZE
        m = self._ti_map
        if m is None or m.length < need:
            m = self._ti_map = Mapping(self.ti_fd, max(need, self._oi_hint * TIME_ENTRY_SIZE))
        return m

    def replace_indexes(self, oi_fd: int, ti_fd: int) -> None:
        """Switch to index files written anew (the old descriptors close)."""
        os.close(self.oi_fd)
        os.close(self.ti_fd)
        self.oi_fd, self.ti_fd = oi_fd, ti_fd
        self._oi_map = self._ti_map = None

    def close(self) -> None:
        for fd in (self.fd, self.oi_fd, self.ti_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fd = self.oi_fd = self.ti_fd = -1
        # Mappings stay alive as long as record views reference them.
        self._map = self._oi_map = self._ti_map = None

    def __del__(self):
        # A segment let go of (OPEN_SEGMENTS, retention) closes its files when
        # the last user is done with it: a reader in another thread that still
        # holds it never sees its descriptors closed, or reused, under it.
        if self.fd >= 0 or self.oi_fd >= 0 or self.ti_fd >= 0:
            try:
                self.close()
            except Exception:  # at interpreter exit, os may be gone already
                pass


class SealedFacts:
    """What is known of a sealed segment, whether its files are open or not."""

    __slots__ = ("size", "oi_n", "ti_n", "max_ts", "ino")

    def __init__(self, size: int, oi_n: int, ti_n: int, max_ts: int | None, ino: int = -1):
        self.size = size          # final size of the .log file
        self.oi_n = oi_n          # valid entries of the offset index
        self.ti_n = ti_n          # valid entries of the time index
        self.max_ts = max_ts      # largest record timestamp, None until computed
        self.ino = ino            # inode of the .log file (the compactor replaces files)


class SegmentCatalog:
    """Every segment of one partition: which exist, which are open here, and
    the facts of the sealed ones.

    ``name`` is the partition's ``topic/index``; ``lock`` is the partition's in-process lock and ``flock`` its append lock
    (held to rebuild a sealed segment's torn index); ``head`` is the
    partition's shared head (to learn of rolls by other threads).
    """

    def __init__(self, path: str, name: str, config, lock, flock, head):
        self.path = path
        self.name = name          # "topic/partition", for messages
        self._lock = lock
        self._flock = flock
        self._head = head
        self.reconfigure(config)
        # Open segments, least recently used first (at most OPEN_SEGMENTS
        # sealed ones besides the newest), and the facts of sealed ones.
        self._open: collections.OrderedDict[int, Segment] = collections.OrderedDict()
        self._facts: dict[int, SealedFacts] = {}
        self._guard = threading.RLock()
        # Sorted bases of the segments. Replaced, never changed in place.
        self._bases: list[int] = []
        # A read-only log's catalog opens files read-only and never repairs
        # an index on disk (it works without one).
        self.readonly = False
        # Whether sealed segments may have gaps in their offsets (compacted,
        # storage/compaction.py); learnt again whenever a segment is opened.
        self.gaps = os.path.exists(os.path.join(path, CLEANER_CHECKPOINT))
        # Called (no lock held) after this catalog opened a segment's files:
        # the partition learns it holds descriptors again (the log's LRU of
        # open partitions, storage/open_partitions.py).
        self.on_open = None

    # ------------------------------------------------------------- listing

    def reconfigure(self, config) -> None:
        """Use ``config`` (a topic's altered settings) for segments opened
        and indexes rebuilt from now on (the sizes are only mapping hints)."""
        self._config = config
        self._map_hint = config.segment_bytes + config.max_batch_bytes
        self._oi_hint = config.segment_bytes // max(config.index_interval_bytes, 1) + 64

    @property
    def bases(self) -> list[int]:
        """Sorted bases of the published segments (a list never changed in place)."""
        return self._bases

    @property
    def open_count(self) -> int:
        """How many segments this process has open now."""
        return len(self._open)

    def list_on_disk(self) -> list[int]:
        """Bases of every segment file in the directory, sorted."""
        bases = []
        for name in os.listdir(self.path):
            m = _SEGMENT_RE.match(name)
            if m:
                bases.append(int(m.group(1)))
        bases.sort()
        return bases

    def get(self, base: int, create: bool = False) -> Segment:
        """The Segment for ``base``, its files opened on first use (sealed
        segments cost no file descriptors until they are read). At most
        OPEN_SEGMENTS sealed segments stay open besides the newest: the least
        recently used one is let go (its files close once no reader holds it)."""
        segs = self._open
        with self._guard:
            seg = segs.get(base)
            if seg is not None:
                segs.move_to_end(base)
                return seg
        seg = Segment(self.path, base, self._map_hint, self._oi_hint, create=create,
                      readonly=self.readonly)
        if not self.gaps:
            self.gaps = os.path.exists(os.path.join(self.path, CLEANER_CHECKPOINT))
        with self._guard:
            other = segs.get(base)
            if other is not None:  # another thread opened it meanwhile: ours closes
                segs.move_to_end(base)
                return other
            facts = self._facts.get(base)
            if facts is not None and facts.ino != seg.ino:
                # The compactor (maybe in another process) swapped in a new
                # file since these facts were learnt: they describe the old one.
                del self._facts[base]
            segs[base] = seg
            if base not in self._bases:
                bases = list(self._bases)
                bisect.insort(bases, base)
                self._bases = bases
            if len(segs) > OPEN_SEGMENTS + 1:
                newest = self._bases[-1]
                for b in segs:
                    if b != newest and b != base:
                        del segs[b]
                        break
        if self.on_open is not None:
            self.on_open()
        return seg

    def get_open(self, base: int) -> Segment | None:
        """The Segment for ``base`` if this process has it open, else None."""
        return self._open.get(base)

    def refresh(self, st) -> None:
        """Learn of segments other processes created; forget those retention
        removed. Segments past the active one are not yet published (a roll
        or a streamed append in progress) and stay out of the list every
        thread shares. The active one is the newer of ``st``'s and the head's
        now: a caller's ``st`` may be older than what another thread has put
        in the list, and cutting the list back to it would hide a segment
        from readers who already know it."""
        with self._lock:
            active = st.active_base
            cur = self._head.read()
            if cur is not None and cur.active_base > active:
                active = cur.active_base
            on_disk = [b for b in self.list_on_disk() if b <= active]
            keep = set(on_disk)
            with self._guard:
                for base, seg in list(self._open.items()):
                    if base not in keep:
                        self.drop(base, unlink=False)
                    elif self.gaps and base < active and not self._current(seg):
                        # The compactor replaced it (maybe merging later
                        # segments into it, which are gone now): the next
                        # reader opens the new file.
                        self.replaced(base)
                for base in [b for b in self._facts if b not in keep]:
                    del self._facts[base]
                self._bases = on_disk

    @staticmethod
    def _current(seg: Segment) -> bool:
        """Whether ``seg``'s log is still the file at its path."""
        try:
            return os.stat(seg.path).st_ino == seg.ino
        except FileNotFoundError:
            return False

    def drop(self, base: int, unlink: bool) -> None:
        """Forget a segment (its files close when the last reader lets go of
        it); with ``unlink``, delete its files."""
        with self._guard:
            self._open.pop(base, None)
            self._facts.pop(base, None)
            if base in self._bases:
                self._bases = [b for b in self._bases if b != base]
        stem = segment_stem(self.path, base)
        if unlink:
            for ext in (".log", ".index", ".timeindex", ".producers"):
                try:
                    os.unlink(stem + ext)
                except FileNotFoundError:
                    pass

    def replaced(self, base: int) -> None:
        """Forget what this process knows of a sealed segment whose files were
        replaced (by the compactor): the next reader opens the new files.
        Readers that still hold the old Segment keep reading the old inode."""
        with self._guard:
            self._open.pop(base, None)
            self._facts.pop(base, None)

    def forget_facts(self) -> None:
        """Learn every sealed segment's facts anew (a rebuild may have cut one)."""
        with self._guard:
            self._facts.clear()

    def find(self, offset: int, st, read_state) -> Segment:
        """The segment holding ``offset``; ``read_state()`` gives the head's
        state anew when a segment turns out deleted meanwhile."""
        bases = self._bases  # one list throughout: another thread may replace it
        if not bases or bases[-1] < st.active_base or bases[0] > offset:
            self.refresh(st)
            bases = self._bases
        for _attempt in range(3):
            i = bisect.bisect_right(bases, offset) - 1
            if i < 0:
                break
            try:
                return self.get(bases[i])
            except FileNotFoundError:
                # Not open here, and deleted by retention (in any process)
                # since ``st`` was read: the head says where the log starts now.
                st = read_state()
                if offset < st.start_offset:
                    break
                self.refresh(st)
                bases = self._bases
        raise OffsetOutOfRangeError(f"offset {offset} is below the start of {self.name}")

    def release(self) -> None:
        """Let go of every open segment, keeping the list and the facts: each
        one's files close once no reader holds it (never under one), and
        :meth:`get` opens them again when next needed."""
        with self._guard:
            self._open.clear()

    def close(self) -> None:
        """Close every open segment and forget the list."""
        with self._guard:
            segs = list(self._open.values())
            self._open.clear()
            self._bases = []
        for seg in segs:
            seg.close()

    # ----------------------------------------------------------- sealed facts

    def known(self, base: int) -> SealedFacts | None:
        """The facts of a sealed segment if already known, without opening it."""
        return self._facts.get(base)

    def sealed(self, seg: Segment) -> SealedFacts:
        """Size and valid index entry counts of a sealed segment (loaded once)."""
        facts = self._facts.get(seg.base)
        if facts is not None and facts.ino == seg.ino:
            return facts
        size = seg.size()
        oi_n = os.fstat(seg.oi_fd).st_size // OFFSET_ENTRY_SIZE
        ti_n = os.fstat(seg.ti_fd).st_size // TIME_ENTRY_SIZE
        file_oi, file_ti = oi_n, ti_n
        if oi_n:
            oi_n = offset_index_valid(seg.oi_map(oi_n), oi_n, size)
        if ti_n:
            ti_n = time_index_valid(seg.ti_map(ti_n), ti_n, size)
        last_pos = offset_index_entry(seg.oi_map(oi_n), oi_n - 1)[1] if oi_n else 0
        interval = self._config.index_interval_bytes
        # Torn (entries failed the checks) or missing (a batch starts an
        # interval or more past the last entry, so it would have one): rebuild.
        missing = False
        if size - last_pos > interval:
            try:
                missing = batch_at_or_after(seg.data(size), last_pos, size,
                                            last_pos + interval) < size
            except CorruptLogError:
                missing = False  # damaged data: reads and verify() report it
        max_ts = None
        if oi_n != file_oi or ti_n != file_ti or missing:
            oi_n, ti_n, max_ts = self._repair_index(seg, size, oi_n, ti_n)
        facts = SealedFacts(size, oi_n, ti_n, max_ts, seg.ino)
        with self._guard:
            # Facts of a file the compactor has replaced meanwhile serve the
            # reader that still holds it, and are not kept for the new one.
            if self._open.get(seg.base, seg) is seg:
                self._facts[seg.base] = facts
        return facts

    def _repair_index(self, seg: Segment, size: int, oi_n: int, ti_n: int):
        """Rebuild a sealed segment's torn or missing indexes from a full scan.
        Returns ``(oi_n, ti_n, max_ts or None)``."""
        if self.readonly:
            return 0, 0, None  # read-only log: work without an index, as below
        with self._lock, self._flock:
            stem = segment_stem(self.path, seg.base)
            try:
                current = os.stat(stem + ".log").st_ino
            except FileNotFoundError:
                current = -1
            if current != os.fstat(seg.fd).st_ino:
                # The compactor replaced the segment since it was opened here:
                # an index of these (old) bytes must not go next to the new file.
                return oi_n, ti_n, None
            builder = IndexBuilder(seg.base, self._config.index_interval_bytes, 0, -1, -1)
            r = scan(seg.data(size), 0, size, -1, builder, self.gaps)
            if r.position != size:
                # Damage inside sealed data: keep the entries that passed the
                # checks; reads and verify() report the corruption at its place.
                return oi_n, ti_n, None
            oi, ti = builder.take()
            # Write new files and rename them over the old ones: another process
            # may have the old index mapped, and truncating a mapped file would
            # fault its reads (SIGBUS). The old inode lives on for it.
            try:
                for ext, data in ((".index", oi), (".timeindex", ti)):
                    tmp = f"{stem}{ext}.tmp{os.getpid()}"
                    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | O_CLOEXEC, 0o644)
                    try:
                        if data:
                            pwrite_all(fd, data, 0)
                    finally:
                        os.close(fd)
                    os.rename(tmp, stem + ext)
                new_oi = os.open(stem + ".index", os.O_RDWR | O_CLOEXEC)
                new_ti = os.open(stem + ".timeindex", os.O_RDWR | O_CLOEXEC)
            except OSError:
                return 0, 0, None  # read-only or full file system: work without an index
            seg.replace_indexes(new_oi, new_ti)
            return len(oi) // OFFSET_ENTRY_SIZE, len(ti) // TIME_ENTRY_SIZE, r.max_timestamp

    def limits(self, seg: Segment, st) -> tuple[int, int, int]:
        """(readable size, offset index entries, time index entries) of a segment."""
        if seg.base == st.active_base:
            return st.active_size, st.oi_count, st.ti_count
        f = self.sealed(seg)
        return f.size, f.oi_n, f.ti_n

    def sealed_size(self, base: int) -> int:
        """Size of a sealed segment, opening it only when not yet known."""
        known = self._facts.get(base)
        if known is not None:
            return known.size
        return self.sealed(self.get(base)).size

    def sealed_max_ts(self, base: int) -> int:
        """Largest timestamp in a sealed segment, opening it only when not yet known."""
        known = self._facts.get(base)
        if known is not None and known.max_ts is not None:
            return known.max_ts
        seg = self.get(base)
        f = self.sealed(seg)
        return self.max_ts(seg, f.size, f.oi_n)

    def max_ts(self, seg: Segment, limit: int, oi_n: int) -> int:
        """Largest timestamp in a sealed segment: the last index entry's batch and after."""
        facts = self.sealed(seg)
        if facts.max_ts is None:
            pos = 0
            if oi_n:
                pos = offset_index_entry(seg.oi_map(oi_n), oi_n - 1)[1]
                if pos >= limit:
                    pos = 0
            r = scan(seg.data(limit), pos, limit, -1, None, self.gaps)
            if r.position != limit:
                raise corrupt_from_code(r.code if r.code != OFFSET_MISMATCH else BAD_RECORDS,
                                        position=r.position)
            best = r.max_timestamp
            if facts.ti_n:
                best = max(best, time_index_entry(seg.ti_map(facts.ti_n), facts.ti_n - 1)[0])
            facts.max_ts = best
        return facts.max_ts


def position_of(seg: Segment, offset: int, limit: int, oi_n: int, gaps: bool = False) -> int:
    """Byte position of the batch holding ``offset`` (index floor, then a header
    walk); with ``gaps`` (a compacted partition), of the first batch at or
    after it."""
    pos, base = 0, seg.base
    if oi_n:
        hit = offset_index_floor(seg.oi_map(oi_n), oi_n, offset - seg.base)
        if hit is not None and hit[1] < limit:
            pos, base = hit[1], seg.base + hit[0]
    m = seg.data(limit)
    # The walk checks that batch offsets continue from the entry's (or the
    # segment's) base: a damaged base_offset, which no CRC covers, must
    # not move records to other offsets.
    try:
        return find_batch(m, pos, limit, offset, base, pos == 0, gaps)
    except CorruptLogError as e:
        first = e
    # A stale or torn index entry (or damage on the way from it). Before
    # walking from the segment's start (whose base the file name fixes),
    # try the floor among the leading well-formed entries: damage early in
    # the segment must not make every later batch unreadable.
    if oi_n:
        k = offset_index_valid(seg.oi_map(oi_n), oi_n, limit)
        hit = offset_index_floor(seg.oi_map(oi_n), k, offset - seg.base) if k else None
        if hit is not None and 0 < hit[1] < limit and hit[1] != pos:
            try:
                return find_batch(m, hit[1], limit, offset, seg.base + hit[0], False, gaps)
            except CorruptLogError:
                pass
    if pos == 0:
        raise first
    return find_batch(m, 0, limit, offset, seg.base, True, gaps)

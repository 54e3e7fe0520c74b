"""The receive side of a server connection: request frames (a 4-byte
big-endian size, then the request) read straight into a buffer of the
connection's own, each handed out as a memoryview of it."""
from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

__all__ = ["FrameConnection", "FrameSizeError"]

_SIZE = struct.Struct(">i")


class FrameSizeError(Exception):
    """A request's size field is outside 8 .. max_request_bytes."""


class FrameConnection(asyncio.streams.FlowControlMixin, asyncio.BufferedProtocol):
    """One client connection's receive side: the transport reads straight into
    a buffer of the connection's own (``BufferedProtocol``), and each request
    frame is handed out as a memoryview of it, so a request is not copied on
    its way in. (asyncio's ``StreamReader`` copies each request twice, its
    buffer's ``extend`` and ``readexactly``'s slice, and allocates fresh memory
    for both: with a confluent-kafka producer's 0.5-1 MiB requests, those
    copies and the page faults of the fresh memory were about a quarter of the
    server's samples in ``perf``.)

    The buffer starts empty (an idle connection holds none), grows to the
    largest frame it has had to hold (at most ``max_frame`` and
    ``_BUF_KEEP`` more) and goes back to nothing when a frame larger than
    ``_BUF_KEEP`` has been served. Reading pauses while ``_BUF_KEEP`` bytes
    are buffered beyond the request being answered, so a client that stops
    reading the answers holds at most that much here.
    """

    def __init__(self, serve: Callable[[FrameConnection, asyncio.StreamWriter], Awaitable[None]],
                 max_frame: int):
        super().__init__()
        self._serve = serve
        self._max_frame = max_frame
        self._buf = bytearray()
        self._start = 0                 # the next unread byte
        self._end = 0                   # the end of the received bytes
        self._busy = False              # a frame handed out is in use: bytes before _start stay put
        self._need = 0                  # bytes from _start a waiting read_frame wants
        self._waiter: asyncio.Future | None = None
        self._eof = False
        self._reading_paused = False
        self.transport: asyncio.Transport | None = None
        self.writer: asyncio.StreamWriter | None = None

    # asyncio's side
    def connection_made(self, transport) -> None:
        self.transport = transport
        loop = asyncio.get_running_loop()
        self.writer = asyncio.StreamWriter(transport, self, None, loop)
        loop.create_task(self._serve(self, self.writer))

    def connection_lost(self, exc) -> None:
        self._eof = True
        self._wake()
        super().connection_lost(exc)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return True                     # half-closed: the requests read are still answered

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self._buf) - self._end < _BUF_MIN_FREE:
            self._make_room(max(_BUF_MIN_FREE, self._need))
        return memoryview(self._buf)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        unread = self._end - self._start
        if self._waiter is not None and unread >= self._need:
            self._wake()
        elif unread > _BUF_KEEP and unread >= self._need and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def data_received(self, data) -> None:
        """For a loop that hands over bytes instead of asking for a buffer
        (uvloop takes this class for a plain Protocol: FlowControlMixin is one):
        one copy into the buffer."""
        n = len(data)
        if len(self._buf) - self._end < n:
            self._make_room(max(n, _BUF_MIN_FREE))
        self._buf[self._end:self._end + n] = data
        self.buffer_updated(n)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _make_room(self, want: int) -> None:
        """At least ``want`` free bytes after the unread ones. While a frame
        handed out is in use, its bytes are not moved: the unread ones go to a
        new buffer (the frame's memoryview keeps the old one alive)."""
        unread = self._end - self._start
        if not self._busy and self._start and len(self._buf) - unread >= want:
            self._buf[:unread] = self._buf[self._start:self._end]   # compact in place
        else:
            new = bytearray(max(unread + want, 2 * len(self._buf), _BUF_FIRST))
            new[:unread] = self._buf[self._start:self._end]
            self._buf = new
        self._start, self._end = 0, unread

    # the connection task's side
    def frame_buffered(self) -> bool:
        """Whether a whole next request frame is already here."""
        unread = self._end - self._start
        if unread < 4:
            return False
        return unread >= 4 + _SIZE.unpack_from(self._buf, self._start)[0]

    async def read_frame(self) -> memoryview | None:
        """The next request frame (without its size field), a memoryview valid
        until the next call; None at the end of the stream. Raises
        FrameSizeError for a size outside 8 .. max_frame, before the frame's
        body is read."""
        self._busy = False              # the previous frame is done with
        if self._start == self._end:
            self._start = self._end = 0
            if len(self._buf) > _BUF_KEEP:
                self._buf = bytearray()     # after a large frame, give the memory back
        while True:
            unread = self._end - self._start
            need = 4
            if unread >= 4:
                (size,) = _SIZE.unpack_from(self._buf, self._start)
                if size < 8 or size > self._max_frame:
                    raise FrameSizeError(size)
                need = 4 + size
                if unread >= need:
                    begin = self._start + 4
                    self._start += need
                    self._busy = True
                    if self._reading_paused and self._end - self._start <= _BUF_KEEP:
                        self._reading_paused = False
                        self.transport.resume_reading()
                    return memoryview(self._buf)[begin:begin + size]
            if self._eof:
                return None
            if len(self._buf) - self._start < need:
                self._make_room(need - unread)
            self._need = need
            if self._reading_paused:
                self._reading_paused = False
                self.transport.resume_reading()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
                self._need = 0


#: The receive buffer: its first size, the free space a read gets at least,
#: and what it keeps (buffered beyond the request in hand, and kept after a
#: request: a larger buffer is let go).
_BUF_FIRST = 64 << 10
_BUF_MIN_FREE = 64 << 10
_BUF_KEEP = 4 << 20

"""The NATS wire layer under the JetStream backend: requests with one or many
replies, the JetStream JSON API, and pipelined publishes, over one nats-py
connection.

Why not nats-py's own request and publish calls: each of those costs a Python
``Msg`` object, a parsed header dict and a future per message, which caps a
client near 15-25k messages/s. The backend moves records in batches (a
JetStream atomic batch of up to 1000 messages, a direct-get batch of as many),
so it

* writes a whole batch as one buffer of ``HPUB`` frames into the connection's
  outgoing queue (``Client._send_command``), and
* receives every reply on one wildcard inbox whose messages a small parser
  (:class:`FastParser`, installed as the connection's protocol parser) hands
  over as raw ``(subject, header bytes, payload)``: no ``Msg`` objects, no
  header dicts; the backend finds the few headers it needs with ``bytes.find``.
  Messages of every other subscription go through nats-py unchanged.

Both rely on nats-py internals (``_send_command``, ``_flush_pending``, ``_ps``
and the parser's state fields). :func:`fast_path_supported` checks they are
there; without them (or with ``fast=False``) the same operations run over
nats-py's public ``publish`` and subscription callbacks, slower but identical
in behaviour.

Reply routing: every request gets a token; its replies arrive on
``<inbox>.<token>`` and go to the handler registered for the token, which
returns True once the request is complete.
"""
from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable

from nats.errors import ProtocolError
from nats.protocol.parser import (
    AWAITING_CONTROL_LINE,
    AWAITING_MSG_PAYLOAD,
    MAX_CONTROL_LINE_SIZE,
    Parser,
)

from unstoppable.errors import BackendError, BackendTimeoutError, BackendUnavailableError

__all__ = ["Wire", "FastParser", "fast_path_supported", "status_of", "header_value", "HDR_LINE"]

HDR_LINE = b"NATS/1.0\r\n"
_CRLF = b"\r\n"


def status_of(hdr: bytes | None) -> int:
    """The inline status of a reply (``NATS/1.0 503`` -> 503), 0 for none."""
    if hdr is None or len(hdr) < 12 or hdr[8] != 0x20:  # "NATS/1.0 " + 3 digits
        return 0
    try:
        return int(hdr[9:12])
    except ValueError:
        return 0


def header_value(hdr: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (given as ``b"\\r\\nName: "``), or None."""
    i = hdr.find(name)
    if i < 0:
        return None
    i += len(name)
    return hdr[i:hdr.index(_CRLF, i)]


class FastParser(Parser):
    """nats-py's protocol parser, with a fast path for ``MSG``/``HMSG``:
    messages of the subscriptions in ``raw`` (sid -> ``fn(subject, hdr,
    payload)``) are handed over without building ``Msg`` objects; anything
    else (other subscriptions, PING, INFO, -ERR) goes through nats-py.

    The state (``buf``, ``state``, ``needed``, ``header_needed``,
    ``msg_arg``) is the base class's, so it can take over mid-stream.
    """

    def __init__(self, nc, raw: dict):
        super().__init__(nc)
        self.raw = raw

    async def parse(self, data: bytes = b""):
        buf = self.buf
        if data:
            buf.extend(data)
        if self.state == AWAITING_MSG_PAYLOAD and len(buf) < self.needed + 2:
            return  # a large message still arriving: nothing to do yet
        # One immutable copy of what is buffered: slicing it copies once,
        # and nothing shifts under the loop (the buffer is trimmed at the
        # end, or before handing control to nats-py).
        view = bytes(buf)
        n = len(view)
        pos = cut = 0
        raw = self.raw
        try:
            while pos < n:
                if self.state == AWAITING_MSG_PAYLOAD:  # a message split across reads
                    needed = self.needed
                    if n - pos < needed + 2:
                        break
                    hn = self.header_needed
                    hdr = view[pos:pos + hn] if hn else None
                    payload = view[pos + hn:pos + needed]
                    pos += needed + 2
                    self.header_needed = 0
                    self.state = AWAITING_CONTROL_LINE
                    arg = self.msg_arg
                    sid, subject, reply = arg["sid"], arg["subject"], arg["reply"]
                else:
                    eol = view.find(_CRLF, pos)
                    if eol < 0:
                        if n - pos > MAX_CONTROL_LINE_SIZE:
                            raise ProtocolError("nats: control line too long")
                        break
                    c = view[pos]
                    parts = view[pos:eol].split() if c == 0x48 or c == 0x4D else None  # HMSG / MSG
                    k = len(parts) if parts else 0
                    if k and parts[0] == b"HMSG" and (k == 5 or k == 6):
                        hn = int(parts[-2])
                        reply = parts[3] if k == 6 else b""
                    elif k and parts[0] == b"MSG" and (k == 4 or k == 5):
                        hn = 0
                        reply = parts[3] if k == 5 else b""
                    else:
                        # Any other operation (PING, PONG, INFO, +OK, -ERR):
                        # exactly this line through nats-py's own parser.
                        # (Handing it the rest of the buffer would route our
                        # messages that follow to nats-py's subscription
                        # queue, where nobody reads them.)
                        line = view[pos:eol + 2]
                        pos = eol + 2
                        del buf[:pos - cut]
                        cut = pos
                        await Parser(self.nc).parse(line)
                        if self.buf is not buf:
                            return  # the connection was reset meanwhile
                        continue
                    subject, sid, needed = parts[1], int(parts[2]), int(parts[-1])
                    start = eol + 2
                    if n - start < needed + 2:  # the rest comes with the next read
                        self.msg_arg = {"subject": subject, "sid": sid, "reply": reply}
                        self.needed = needed
                        self.header_needed = hn
                        self.state = AWAITING_MSG_PAYLOAD
                        pos = start
                        break
                    hdr = view[start:start + hn] if hn else None
                    payload = view[start + hn:start + needed]
                    pos = start + needed + 2
                fn = raw.get(sid)
                if fn is not None:
                    fn(subject, hdr, payload)
                    continue
                del buf[:pos - cut]
                cut = pos
                await self.nc._process_msg(sid, subject, reply, payload, hdr)
                if self.buf is not buf:
                    return  # the connection was reset meanwhile
        finally:
            if pos > cut and self.buf is buf:
                del buf[:pos - cut]


def fast_path_supported(nc) -> bool:
    """Whether this nats-py connection has the internals the fast path uses."""
    ps = getattr(nc, "_ps", None)
    return (type(ps) is Parser and all(hasattr(ps, a) for a in ("buf", "state", "needed",
                                                                "header_needed", "msg_arg"))
            and callable(getattr(nc, "_send_command", None))
            and callable(getattr(nc, "_flush_pending", None))
            and callable(getattr(nc, "_process_msg", None)))


def _headers_to_bytes(headers: dict | None) -> bytes | None:
    """Rebuild a header block from nats-py's parsed dict (the slow path)."""
    if not headers:
        return None
    status = headers.get("Status")
    first = b"NATS/1.0 " + status.encode() if status else b"NATS/1.0"
    desc = headers.get("Description")
    if status and desc:
        first += b" " + desc.encode()
    lines = [first]
    for k, v in headers.items():
        if k in ("Status", "Description"):
            continue
        lines.append(f"{k}: {v}".encode())
    return _CRLF.join(lines) + _CRLF + _CRLF


class Wire:
    """Requests and pipelined publishes over one nats-py connection.

    ``request_timeout`` bounds every request; a request whose reply does not
    come in time fails with BackendTimeoutError (its outcome unknown).
    """

    def __init__(self, nc, *, request_timeout: float = 5.0, fast: bool = True):
        self.nc = nc
        self.request_timeout = request_timeout
        self.fast = fast and fast_path_supported(nc)
        self._handlers: dict[bytes, Callable] = {}
        self._tokens = itertools.count(1)
        self._prefix = b""
        self._sub = None

    async def start(self) -> None:
        nc = self.nc
        self._prefix = nc.new_inbox().encode()
        plen = len(self._prefix) + 1
        handlers = self._handlers

        def on_reply(subject: bytes, hdr, payload: bytes) -> None:
            fn = handlers.get(subject[plen:])
            if fn is not None and fn(hdr, payload):
                handlers.pop(subject[plen:], None)

        if self.fast:
            self._sub = await nc.subscribe(self._prefix.decode() + ".*")
            parser = FastParser(nc, {self._sub._id: on_reply})
            parser.buf = nc._ps.buf  # keep anything already received
            parser.state = nc._ps.state
            parser.needed = nc._ps.needed
            parser.header_needed = nc._ps.header_needed
            parser.msg_arg = nc._ps.msg_arg
            nc._ps = parser
        else:
            async def cb(msg):
                on_reply(msg.subject.encode(), _headers_to_bytes(msg.headers), msg.data)
            self._sub = await nc.subscribe(self._prefix.decode() + ".*", cb=cb,
                                           pending_msgs_limit=-1, pending_bytes_limit=-1)
        await nc.flush()

    # ------------------------------------------------------------- requests

    def new_reply(self, handler: Callable) -> tuple[bytes, bytes]:
        """Register ``handler(hdr, payload) -> done`` under a fresh token;
        returns ``(token, reply subject)``."""
        token = b"%x" % next(self._tokens)
        self._handlers[token] = handler
        return token, self._prefix + b"." + token

    def drop(self, token: bytes) -> None:
        self._handlers.pop(token, None)

    async def send(self, data: bytes) -> None:
        """Queue raw protocol frames and flush them."""
        nc = self.nc
        if not nc.is_connected:
            # Not buffered for later: by the time the connection is back the
            # caller has timed out and retried, and stale copies would follow.
            raise BackendUnavailableError("the NATS connection is closed" if nc.is_closed else
                                          "not connected to NATS (reconnecting)")
        await nc._send_command(data)
        await nc._flush_pending()

    async def publish(self, subject: bytes, payload: bytes, reply: bytes = b"",
                      hdr: bytes | None = None) -> None:
        """Publish one message (frames built here on the fast path)."""
        if self.fast:
            await self.send(frame(subject, payload, reply, hdr))
        else:
            await self.publish_slow(subject, payload, reply, hdr)

    async def publish_slow(self, subject: bytes, payload: bytes, reply: bytes = b"",
                           hdr: bytes | None = None) -> None:
        if not self.nc.is_connected:
            raise BackendUnavailableError("the NATS connection is closed" if self.nc.is_closed else
                                          "not connected to NATS (reconnecting)")
        headers = None
        if hdr is not None:
            headers = {}
            for line in hdr.split(_CRLF)[1:]:
                if line:
                    k, _, v = line.partition(b": ")
                    headers[k.decode()] = v.decode()
        try:
            await self.nc.publish(subject.decode(), payload, reply=reply.decode(), headers=headers)
        except Exception as e:
            raise BackendUnavailableError(f"publish to {subject.decode()} failed: {e}") from e

    async def request(self, subject: bytes, payload: bytes, hdr: bytes | None = None,
                      timeout: float | None = None) -> tuple:
        """One request, one reply: ``(header bytes | None, payload)``.
        A 503 reply (nobody serves the subject) raises BackendUnavailableError."""
        fut = asyncio.get_running_loop().create_future()

        def on(h, p):
            if not fut.done():
                fut.set_result((h, p))
            return True

        token, reply = self.new_reply(on)
        try:
            await self.publish(subject, payload, reply, hdr)
            h, p = await _wait(fut, self.request_timeout if timeout is None else timeout, subject)
        finally:
            self.drop(token)
        if status_of(h) == 503:
            raise BackendUnavailableError(f"no server answers on {subject.decode()} (no responders)")
        return h, p

    async def api(self, what: str, body: dict | None = None, timeout: float | None = None) -> dict:
        """A JetStream API request (``$JS.API.<what>``); returns the decoded
        reply, raising BackendError for an error reply."""
        _, p = await self.request(b"$JS.API." + what.encode(),
                                  json.dumps(body).encode() if body is not None else b"", None, timeout)
        try:
            out = json.loads(p)
        except ValueError:
            raise BackendError(f"JetStream API {what}: unreadable reply {p[:200]!r}") from None
        err = out.get("error")
        if err is not None:
            raise api_error(what, err)
        return out

    async def subscribe_raw(self, subject: str, fn: Callable):
        """Subscribe to ``subject``; ``fn(subject, hdr, payload)`` is called
        for every message (on the fast path without building Msg objects)."""
        if self.fast:
            sub = await self.nc.subscribe(subject)
            self.nc._ps.raw[sub._id] = fn
        else:
            async def cb(msg):
                fn(msg.subject.encode(), _headers_to_bytes(msg.headers), msg.data)
            sub = await self.nc.subscribe(subject, cb=cb)
        return sub

    async def unsubscribe(self, sub) -> None:
        if self.fast:
            self.nc._ps.raw.pop(sub._id, None)
        try:
            await sub.unsubscribe()
        except Exception:
            pass  # closed or reconnecting: the server drops it with the connection

    async def close(self) -> None:
        for token in list(self._handlers):
            self._handlers.pop(token, None)


def api_error(what: str, err: dict) -> BackendError:
    desc = str(err.get("description", ""))
    return BackendError(f"JetStream API {what}: {desc} (code {err.get('code')}, "
                        f"err_code {err.get('err_code')})", code=int(err.get("code", 0) or 0),
                        err_code=int(err.get("err_code", 0) or 0), description=desc)


async def _wait(fut, timeout: float, subject: bytes):
    try:
        return await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        raise BackendTimeoutError(f"no reply on {subject.decode()} within {timeout:g} s") from None


def frame(subject: bytes, payload: bytes, reply: bytes = b"", hdr: bytes | None = None) -> bytes:
    """One ``PUB``/``HPUB`` protocol frame."""
    if hdr is None:
        if reply:
            return b"PUB %s %s %d\r\n%s\r\n" % (subject, reply, len(payload), payload)
        return b"PUB %s %d\r\n%s\r\n" % (subject, len(payload), payload)
    if reply:
        return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subject, reply, len(hdr), len(hdr) + len(payload),
                                                   hdr, payload)
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (subject, len(hdr), len(hdr) + len(payload), hdr, payload)

"""What every command shares: errors, output, opening the log."""
from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import sys

_EXIT_USAGE = 2
_EXIT_ERROR = 1


class CLIError(Exception):
    """A one-line error for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = _EXIT_ERROR):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise CLIError(f"{message} (see '{self.prog} --help')", _EXIT_USAGE)


def _n(count: int, word: str) -> str:
    """``1 record``, ``2 records``, ``2 batches``: a count and its noun, in the plural when not 1."""
    if count == 1:
        return f"1 {word}"
    return f"{count:,} {word}{'es' if word.endswith(('ch', 'sh', 's', 'x')) else 's'}"


def _emit(obj) -> None:
    print(json.dumps(obj, default=str))


def _text(b) -> str | None:
    """Bytes as text for JSON (which escapes what it must): UTF-8, invalid bytes as \\xNN."""
    if b is None:
        return None
    return bytes(b).decode("utf-8", "backslashreplace")


# For _printable: control characters, a backslash itself, and the bytes that
# are not UTF-8 (decoded as the surrogates U+DC80..U+DCFF by "surrogateescape").
_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7f]}
_ESCAPES.update({0x09: "\\t", 0x0a: "\\n", 0x0d: "\\r", 0x5c: "\\\\"})
_ESCAPES.update({0xdc00 + i: f"\\x{i:02x}" for i in range(0x80, 0x100)})


def _printable(b) -> str | None:
    """Bytes as one field of a line (tab-separated output, CSV cells): UTF-8,
    with tab, newline and CR as ``\\t``, ``\\n``, ``\\r``, other control
    characters and bytes that are not UTF-8 as ``\\xNN``, and a backslash as
    ``\\\\``, so a field never contains a separator and every escape is
    unambiguous."""
    if b is None:
        return None
    return bytes(b).decode("utf-8", "surrogateescape").translate(_ESCAPES)


_REMOTE_COMMANDS = "topics create|list|describe, produce, consume, tail, groups, dlq list|redrive and demo"


def _log_url(args) -> str:
    url = args.log or os.environ.get("UNSTOPPABLE_LOG")
    if not url:
        raise CLIError("no log given: pass --log DIR (or nats://host:port) or set UNSTOPPABLE_LOG")
    return url


def _is_remote(url: str) -> bool:
    from unstoppable.connect import is_remote_url
    return is_remote_url(url)


def _log_path(args) -> str:
    """The directory of --log, refusing a JetStream URL for commands that need an embedded log."""
    path = _log_url(args)
    if _is_remote(path):
        raise CLIError(f"{args.command} needs an embedded log (a directory); on {path.split('://')[0]}:// "
                       f"logs the CLI offers {_REMOTE_COMMANDS}")
    if path.startswith("file://"):
        path = path[len("file://"):]
    return path


def _open_log(args, *, create: bool = False, writes: str | None = None):
    """The embedded log of --log (a directory that must hold a log, unless
    ``create``). A log that opened read-only (``readonly_reason``) is said
    so in one line on stderr; a command that ``writes`` (what it does, for
    the message) fails on it at once with ReadOnlyLogError's message."""
    import unstoppable as us
    path = _log_path(args)
    if not create and not os.path.isdir(path):
        raise CLIError(f"no log at {path}")
    log = us.Log(path, create=create)
    if log.readonly:
        if writes is not None:
            try:
                log.check_writable(writes)
            finally:
                log.close()
        print(f"unstoppable: log {log.path} is read-only ({log.readonly_reason}): "
              f"reading only", file=sys.stderr)
    return log


def _run_on_log(args, work, *, create: bool = False, writes: str | None = None):
    """Run ``await work(log)`` on the log of --log: the embedded log (made
    if missing when ``create``), or a JetStream cluster for nats:// and
    tls:// URLs (connected inside the event loop that uses it). ``writes``
    says what the command writes (see :func:`_open_log`)."""
    import unstoppable as us
    url = _log_url(args)
    if not _is_remote(url):
        with _open_log(args, create=create, writes=writes) as log:
            return asyncio.run(work(log))

    async def remote():
        log = await us.connect(url)
        try:
            return await work(log)
        finally:
            await log.close()
    return asyncio.run(remote())


def _run_admin(args, work, *, create: bool = False, writes: str | None = None):
    """Run ``await work(admin)`` with the :class:`unstoppable.admin.Admin`
    of the log of --log (either backend)."""
    from unstoppable.admin import admin_for

    async def with_admin(log):
        admin = admin_for(log)
        try:
            return await work(admin)
        finally:
            await admin.close()
    return _run_on_log(args, with_admin, create=create, writes=writes)


def _topic(log, name: str):
    return log.topic(name)


def _codec(name):
    from unstoppable import codecs
    try:
        return codecs.get(name)
    except (ValueError, TypeError) as e:
        raise CLIError(str(e), _EXIT_USAGE) from None


def _show_value(codec, value, as_json: bool):
    """A record value for output: decoded by the codec when one is given."""
    if value is None:
        return None
    if codec is None:
        return _text(value) if as_json else _printable(value)
    from unstoppable.codecs import ProtobufCodec
    try:
        obj = codec.decode(value)
    except Exception as e:  # shown, not fatal: one bad record must not stop a dump
        return {"undecodable": _text(value), "error": str(e)} if as_json else f"<undecodable: {e}>"
    if isinstance(codec, ProtobufCodec):
        d = codec.to_dict(obj)
        kind = obj.WhichOneof("kind") if "kind" in obj.DESCRIPTOR.oneofs_by_name else None
        if kind is not None:
            d = {"kind": kind, **d}
        return d if as_json else json.dumps(d, separators=(",", ":"))
    if isinstance(obj, bytes):
        return _text(obj) if as_json else _printable(obj)
    if as_json:
        return obj
    return _printable(obj.encode()) if isinstance(obj, str) else json.dumps(obj)


def _record_dict(topic, r, codec):
    return {"topic": topic, "partition": r.partition, "offset": r.offset,
            "timestamp": r.timestamp, "key": _text(r.key),
            "value": _show_value(codec, r.value, True),
            "headers": {k: _text(v) for k, v in r.headers}}


def _b64(b) -> str | None:
    import base64
    return None if b is None else base64.b64encode(bytes(b)).decode()


def _record_dict_b64(topic, r) -> dict:
    """A record for --json --encoding base64: key, value and header values as base64."""
    return {"topic": topic, "partition": r.partition, "offset": r.offset, "timestamp": r.timestamp,
            "encoding": "base64", "key": _b64(r.key), "value": _b64(r.value),
            "headers": [[k, _b64(v)] for k, v in r.headers]}


def _print_record(args, topic, r, codec):
    if args.json and getattr(args, "encoding", "text") == "base64" and codec is None:
        _emit(_record_dict_b64(topic, r))
    elif args.json:
        _emit(_record_dict(topic, r, codec))
    else:
        key = _printable(r.key)
        print(f"{r.partition}/{r.offset}\t{'' if key is None else key}\t{_show_value(codec, r.value, False)}")


def _progress(args, label, total=None):
    from unstoppable._progress import Progress
    return Progress(label, total, force=getattr(args, "progress", False))


def _iso(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).isoformat(timespec="milliseconds")

"""One entry point for every backend: ``log = await unstoppable.connect(url)``.

* ``nats://host:port[,host:port...]`` (or ``tls://``): a NATS JetStream
  cluster, as a :class:`~unstoppable.backends.jetstream.JetStreamLog` that
  ``Producer`` and ``Consumer`` accept as they accept a ``us.Log``.
* a filesystem path, or ``file:///path``: the embedded ``us.Log``.

So one URL in configuration switches an application between the embedded log
and a cluster.
"""
from __future__ import annotations

import os
import urllib.parse

from unstoppable.errors import InvalidURLError

__all__ = ["connect", "is_remote_url", "nats_servers", "NATS_SCHEMES"]

#: URL schemes of a NATS JetStream cluster (``tls://`` is NATS over TLS).
NATS_SCHEMES = ("nats", "tls")


def is_remote_url(url) -> bool:
    """is_remote_url(url) -> bool

    Whether ``url`` names a NATS JetStream cluster (``nats://`` or ``tls://``,
    any case) rather than an embedded log (a path or ``file://`` URL). The one
    test of this in the package; :func:`nats_servers` checks the rest."""
    if not isinstance(url, str):
        return False
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() in NATS_SCHEMES


def nats_servers(url: str) -> list[str]:
    """nats_servers(url) -> list[str]

    The server URLs of a ``nats://host:port[,host:port...]`` (or ``tls://``)
    URL, each checked: ``nats://a:1,b`` -> ``["nats://a:1", "nats://b:4222"]``.
    Raises InvalidURLError naming what is wrong."""
    if not is_remote_url(url):
        raise InvalidURLError(f"{url!r} is not a NATS URL: use nats://host:port[,host:port...] "
                              "or tls://host:port[,host:port...]")
    scheme, _, rest = url.partition("://")
    return _nats_servers(url, scheme.lower(), rest)


async def connect(url, **options):
    """connect(url, **options) -> us.Log | JetStreamLog

    Open the log at ``url``. Options go to ``us.Log(path, ...)`` for a path
    and to :meth:`JetStreamLog.connect` for a NATS URL (``request_timeout``,
    ``publish_timeout``, ``lease_ttl``, ``nats_options`` ...).

    Raises InvalidURLError for an unknown scheme or a malformed host list,
    and BackendUnavailableError when no NATS server can be reached.
    """
    if isinstance(url, os.PathLike):
        return _embedded(os.fspath(url), options)
    if not isinstance(url, str):
        raise TypeError(f"url must be a str or a path, got {type(url).__name__}")
    if not url:
        raise InvalidURLError("empty log URL: give a directory path, file:///path or nats://host:port")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _embedded(url, options)
    scheme = scheme.lower()
    if scheme == "file":
        host, _, path = rest.partition("/")
        if host not in ("", "localhost"):
            raise InvalidURLError(f"file URL {url!r} names host {host!r}; only local paths "
                                  "(file:///path) are supported")
        return _embedded("/" + urllib.parse.unquote(path), options)
    if scheme in NATS_SCHEMES:
        from unstoppable.backends.jetstream import JetStreamLog
        return await JetStreamLog.connect(_nats_servers(url, scheme, rest), **options)
    raise InvalidURLError(f"unknown scheme {scheme!r} in log URL {url!r}: use nats://host:port[,host:port...], "
                          "file:///path or a directory path")


def _embedded(path: str, options: dict):
    from unstoppable.storage import Log
    return Log(path, **options)


def _nats_servers(url: str, scheme: str, rest: str) -> list[str]:
    """``nats://a:1,b:2`` -> ``["nats://a:1", "nats://b:2"]``, checked."""
    rest = rest.rstrip("/")
    if not rest:
        raise InvalidURLError(f"NATS URL {url!r} names no server: use {scheme}://host:port[,host:port...]")
    creds = ""
    if "@" in rest:
        creds, _, rest = rest.rpartition("@")
        creds += "@"
    servers = []
    for hostport in rest.split(","):
        hostport = hostport.strip()
        if hostport.startswith(f"{scheme}://"):
            hostport = hostport[len(scheme) + 3:]
        if "/" in hostport or "?" in hostport:
            raise InvalidURLError(f"NATS URL {url!r}: {hostport!r} is not host:port")
        if hostport.startswith("["):  # [IPv6]:port
            end = hostport.find("]")
            tail = hostport[end + 1:] if end > 0 else "?"
            if tail and not tail.startswith(":"):
                raise InvalidURLError(f"NATS URL {url!r}: {hostport!r} is not [address]:port")
            host, port = hostport[:end + 1], tail[1:] if tail else "4222"
        else:
            host, colon, port = hostport.partition(":")
            if not colon:
                port = "4222"
        if not host:
            raise InvalidURLError(f"NATS URL {url!r}: a server has no host ({hostport!r})")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidURLError(f"NATS URL {url!r}: port {port!r} of {host} is not a number in 1..65535")
        servers.append(f"{scheme}://{creds}{host}:{int(port)}")
    return servers

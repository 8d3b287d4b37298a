"""Serve a shard set read-only over HTTP, so other machines can train from it.

Built on werkzeug (a real WSGI server and HTTP toolkit), which answers conditional
requests and HEAD and sets ``Content-Length``. Only a whitelist is reachable:
``manifest.json``, ``failures.jsonl`` and the shards the manifest lists, looked up by
exact name, so no path (``..``, ``%2e%2e``, absolute) can reach anything else, and
nothing is listed. GET and HEAD only. On every request the file's real path is
resolved and must lie inside the folder, and it is opened without following a link
and only when it is a regular file (:mod:`vidshard.shards.localset`): a shard or
``failures.jsonl`` replaced by a link out of the set after the start is a 404.

The whitelist follows ``manifest.json`` (checked on every request with one ``stat``),
so a set can be served while it grows; while the file is missing or broken, the last
valid manifest is served (and its list used), so shard requests never become 500s.

At most ``max_connections`` connections are served at once (one thread each); more
get ``503`` with ``Retry-After`` (the vidshard client retries), and a connection
silent for ``idle_timeout`` seconds is closed. ``Range`` follows RFC 9110 §14.2: one
valid byte range gets 206 (a suffix longer than the file is the whole file), a valid
but unsatisfiable one 416, and an invalid one, another unit, or several ranges are
ignored (200 with the whole file).

There is no TLS and no authentication: serve on a trusted network only.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestedRangeNotSatisfiable
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import wrap_file

from .localset import open_set_file
from .schema import FAILURES, MANIFEST, Manifest, ManifestError

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """What to serve and where."""

    shardset: Path
    """Folder holding ``manifest.json`` and the shards."""
    host: str = "127.0.0.1"
    """Interface to bind. The loopback default keeps the set private to this machine;
    pass ``0.0.0.0`` (or one interface's address) to serve other machines."""
    port: int = 8765
    """TCP port; 0 picks a free one (printed at start)."""
    max_connections: int = 64
    """Connections served at once (a thread each); more are answered 503 and retried by clients."""
    idle_timeout: float = 30.0
    """Seconds a connection may stay silent (no request, or not reading a response) before it is closed."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_connections < 1 or not self.idle_timeout > 0:
            raise ValueError(f"max_connections must be >= 1 and idle_timeout > 0, got "
                             f"{self.max_connections}, {self.idle_timeout}")
        if not (Path(self.shardset) / MANIFEST).is_file():
            raise FileNotFoundError(
                f"{self.shardset}: no {MANIFEST} here; serve the folder `vidshard preprocess` wrote"
            )


_RANGE = re.compile(r"([0-9]*)-([0-9]*)")


def byte_range(header: str | None, length: int) -> tuple[int, int] | None:
    """The ``(first, last)`` bytes (inclusive) a ``Range`` header asks of a ``length``-byte file, or
    ``None`` to ignore it and send the whole file (RFC 9110 §14.2: another unit, an invalid
    ranges-specifier, or several ranges, which this server does not combine).

    Raises ``RequestedRangeNotSatisfiable`` for one valid range that the file cannot satisfy (a
    first byte at or past the end, or a zero-length suffix).
    """
    unit, eq, spec = (header or "").partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    specs = [p.strip() for p in spec.split(",") if p.strip()]  # empty list elements are allowed
    m = _RANGE.fullmatch(specs[0]) if len(specs) == 1 else None
    if m is None or m[1] == m[2] == "":
        return None
    if m[1] == "":  # suffix range: the last N bytes (all of a shorter file)
        if int(m[2]) == 0 or length == 0:
            raise RequestedRangeNotSatisfiable(length=length)
        return max(0, length - int(m[2])), length - 1
    first = int(m[1])
    if m[2] != "" and int(m[2]) < first:
        return None  # invalid (last-pos before first-pos): ignored
    last = length - 1 if m[2] == "" else int(m[2])
    if first >= length:
        raise RequestedRangeNotSatisfiable(length=length)
    return first, min(last, length - 1)


class ShardSetApp:
    """The WSGI application: a whitelist of file names of the shard set, checked on every request."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._names: frozenset[str] = frozenset()
        self._manifest = b""
        if not self._reload():
            raise ManifestError(f"{self.folder / MANIFEST}: cannot serve a set whose manifest is unreadable")

    def _reload(self) -> bool:
        """Take ``manifest.json`` as the served list when it is valid; False (old list kept) if not."""
        try:
            with open_set_file(self.folder, MANIFEST) as f:
                st = os.fstat(f.fileno())
                data = f.read()
            manifest = Manifest.from_json(data, str(self.folder / MANIFEST))
        except (OSError, ValueError) as e:  # missing, a link out, broken or invalid
            log.error("%s/%s is unreadable (%s); serving the previous manifest", self.folder, MANIFEST, e)
            return False
        self._names = frozenset([MANIFEST, FAILURES, *(i.name for i in manifest.shards)])
        self._manifest, self._stamp = data, (st.st_ino, st.st_mtime_ns, st.st_size)
        return True

    def _refresh(self) -> frozenset[str]:
        """The whitelist, re-read when ``manifest.json`` changed (one ``stat`` per request)."""
        try:
            st = os.stat(self.folder / MANIFEST)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        with self._lock:
            if stamp is not None and stamp != self._stamp and not self._reload():
                self._stamp = stamp  # broken: do not re-read it on every request until it changes
            return self._names

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self.respond(request)
        except HTTPException as e:
            response = e.get_response(environ)
        return response(environ, start_response)

    def respond(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(valid_methods=["GET", "HEAD"])
        name = request.path.lstrip("/")  # already %-decoded by werkzeug
        if name not in self._refresh():
            raise NotFound(f"Not part of this shard set; start with /{MANIFEST}, which lists the shards.")
        if name == MANIFEST:  # the last valid one, even while the file is being rewritten or broken
            with self._lock:
                data = self._manifest
            return _send(io.BytesIO(data), request.environ, "application/json", len(data),
                         hashlib.sha256(data).hexdigest()[:32], None)
        try:
            f = open_set_file(self.folder, name)  # resolved now: a link swapped in later is refused
        except (OSError, ManifestError) as e:
            log.warning("not serving %s: %s", name, e)
            raise NotFound("Listed in the manifest but not available here.") from None
        st = os.fstat(f.fileno())
        mimetype = "application/jsonl" if name == FAILURES else "application/x-tar"
        return _send(f, request.environ, mimetype, st.st_size,
                     f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}", st.st_mtime)


def _send(f: BinaryIO, environ: dict, mimetype: str, size: int, etag: str,
          mtime: float | None) -> Response:
    """A (conditional, ranged) response streaming ``f``; closes ``f`` when no response is made."""
    try:
        environ = dict(environ)
        wanted = byte_range(environ.pop("HTTP_RANGE", None), size)
        if wanted is not None:
            environ["HTTP_RANGE"] = f"bytes={wanted[0]}-{wanted[1]}"
        rv = Response(wrap_file(environ, f), mimetype=mimetype, direct_passthrough=True)
        rv.content_length = size
        if mtime is not None:
            rv.last_modified = mtime
        rv.cache_control.no_cache = True
        rv.set_etag(etag)
        return rv.make_conditional(environ, accept_ranges=True, complete_length=size)
    except BaseException:
        f.close()
        raise


class _Handler(WSGIRequestHandler):
    """Closes a connection that stays silent for the server's ``idle_timeout``."""

    protocol_version = "HTTP/1.1"  # keep-alive, as werkzeug's threaded server does

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # StreamRequestHandler.setup applies it to the socket
        super().setup()


_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
         b"Connection: close\r\n\r\n")


class BoundedWSGIServer(BaseWSGIServer):
    """A werkzeug server with one thread per connection, at most ``max_connections`` of them."""

    multithread = True
    daemon_threads = True

    def __init__(self, host: str, port: int, app: Callable, *, max_connections: int,
                 idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(host, port, app, _Handler)

    def process_request(self, request: socket.socket, client_address: object) -> None:
        if not self._slots.acquire(blocking=False):
            try:  # a few bytes into an empty socket buffer: never blocks the accept loop
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        threading.Thread(target=self._serve, args=(request, client_address), daemon=True).start()

    def _serve(self, request: socket.socket, client_address: object) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()


def make_shard_server(cfg: ServeConfig) -> BaseWSGIServer:
    """A bounded threaded werkzeug server for ``cfg`` (not started); ``.server_port`` is the bound port.

    Tests run it with ``threading.Thread(target=srv.serve_forever)`` and stop it
    with ``srv.shutdown()``.
    """
    return BoundedWSGIServer(cfg.host, cfg.port, ShardSetApp(cfg.shardset),
                             max_connections=cfg.max_connections, idle_timeout=cfg.idle_timeout)


def url_of(server: BaseWSGIServer) -> str:
    """``http://host:port/`` of a running server, for clients to pass as the shard set."""
    host = server.host if server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{server.server_port}/"


def serve(cfg: ServeConfig) -> None:
    """Serve ``cfg.shardset`` until interrupted (Ctrl-C)."""
    server = make_shard_server(cfg)
    manifest = Manifest.load(cfg.shardset)
    print(f"Serving {cfg.shardset} ({len(manifest.shards)} shards, {manifest.num_samples} samples) "
          f"read-only at {url_of(server)}", flush=True)
    if cfg.host in ("127.0.0.1", "localhost", "::1"):
        print("Only this machine can connect; pass --host 0.0.0.0 to serve other machines.", flush=True)
    elif cfg.host in ("0.0.0.0", "::"):
        print(f"Other machines: vidshard train http://{socket.gethostname()}:{server.server_port}/ "
              "--cache-dir DIR (no authentication: serve on a trusted network only)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

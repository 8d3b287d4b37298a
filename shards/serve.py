"""Serve a shard set read-only over HTTP, so other machines can train from it.

Built on werkzeug (a real WSGI server and HTTP toolkit): ``send_file`` answers
Range requests (206 with ``Content-Range``), conditional requests and HEAD, and
sets ``Content-Length``. Only a whitelist is reachable: ``manifest.json``,
``failures.jsonl`` and the shards the manifest lists, looked up by exact name,
so no path (``..``, ``%2e%2e``, absolute, symlinks out of the folder) can reach
anything else, and nothing is listed. GET and HEAD only. The whitelist is
re-read when ``manifest.json`` changes, so a set can be served while it grows.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from .schema import FAILURES, MANIFEST, Manifest

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

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not (Path(self.shardset) / MANIFEST).is_file():
            raise FileNotFoundError(
                f"{self.shardset}: no {MANIFEST} here; serve the folder `vidshard preprocess` wrote"
            )


class ShardSetApp:
    """The WSGI application: a whitelist of file names mapped to files inside the shard set."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self._lock = threading.Lock()
        self._files = self._whitelist(Manifest.load(self.folder))  # fails early on a broken manifest
        st = (self.folder / MANIFEST).stat()
        self._stamp = (st.st_mtime_ns, st.st_size)

    def _refresh(self) -> dict[str, Path]:
        """Rebuild the whitelist when ``manifest.json`` changed since the last request."""
        st = (self.folder / MANIFEST).stat()
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._files = self._whitelist(Manifest.load(self.folder))
                except (ValueError, KeyError, TypeError) as e:  # broken by hand: keep the last good list
                    log.error("%s/%s is unreadable (%s); serving the previous shard list", self.folder,
                              MANIFEST, e)
                self._stamp = stamp
            return self._files

    def _whitelist(self, manifest: Manifest) -> dict[str, Path]:
        files = {MANIFEST: self.folder / MANIFEST, FAILURES: self.folder / FAILURES}
        for info in manifest.shards:
            path = (self.folder / info.name).resolve()
            if "/" in info.name or "\\" in info.name or path.parent != self.folder:
                log.warning("not serving %r: a manifest entry must name a file inside %s", info.name,
                            self.folder)
                continue
            files[info.name] = path
        return files

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
        path = self._refresh().get(name)
        if path is None or not path.is_file():
            raise NotFound(f"Not part of this shard set; start with /{MANIFEST}, which lists the shards.")
        mimetype = "application/json" if name == MANIFEST else (
            "application/jsonl" if name == FAILURES else "application/x-tar")
        return send_file(path, request.environ, mimetype=mimetype, conditional=True, etag=True)


def make_shard_server(cfg: ServeConfig) -> BaseWSGIServer:
    """A threaded werkzeug server for ``cfg`` (not started); ``.server_port`` is the bound port.

    Tests run it with ``threading.Thread(target=srv.serve_forever)`` and stop it
    with ``srv.shutdown()``.
    """
    return make_server(cfg.host, cfg.port, ShardSetApp(cfg.shardset), threaded=True)


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

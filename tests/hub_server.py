"""A TF Hub-like HTTP server on loopback, and model tarballs (good and hostile) for it."""

from __future__ import annotations

import io
import tarfile
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class HubServer:
    """Serves registered tarballs the way tfhub.dev does.

    `/<path>?tf-hub-format=compressed` (and a path ending in `.tar.gz` with any
    query) answers the tarball; anything else is 404. Every request is recorded.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                parts = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parts.query))
                body = server.files.get(parts.path)
                wants_archive = query.get("tf-hub-format") == "compressed"
                if body is None or not (wants_archive or parts.path.endswith(".tar.gz")):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-tar")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def add(self, path: str, body: bytes) -> str:
        """Serve `body` at `path`; returns the handle (full URL)."""
        self.files[path] = body
        return self.url + path

    def downloads(self, path: str) -> int:
        return sum(1 for r in self.requests if urllib.parse.urlsplit(r).path == path)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextmanager
def hub_server() -> Iterator[HubServer]:
    server = HubServer().start()
    try:
        yield server
    finally:
        server.stop()


def tar_dir(folder: Path, top: str = ".") -> bytes:
    """The folder as a .tar.gz with members under `top` (TF Hub puts them at `./`)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(str(folder), arcname=top)
    return buf.getvalue()


def tar_members(*members: tarfile.TarInfo | tuple[str, bytes]) -> bytes:
    """A .tar.gz of the given members: (name, content) files or raw TarInfos."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def link(name: str, target: str, *, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info

"""A Docker engine that cannot pull, on a unix socket, for tests of the container fallback.

It answers what a real one answered (recorded from dockerd 20.10.24 with no route to a
registry: `curl --unix-socket ... /_ping, /version, /images/<name>/json, POST /images/create`):
it is up, knows no image but those given, and every pull fails with the engine's own message.
The docker SDK and testcontainers talk to it over HTTP as to the real thing, so their real code
paths and exception types are exercised. Anything else it is asked answers 500 and is recorded,
so a test sees what was attempted.
"""

from __future__ import annotations

import http.server
import json
import re
import socketserver
import threading
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

NO_REGISTRY = (
    'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io '
    "on 10.255.255.53:53: no such host"
)
_VERSION = {
    "Version": "20.10.24+dfsg1",
    "ApiVersion": "1.41",
    "MinAPIVersion": "1.12",
    "GitCommit": "5d6db84",
    "GoVersion": "go1.19.8",
    "Os": "linux",
    "Arch": "amd64",
    "Components": [{"Name": "Engine", "Version": "20.10.24+dfsg1"}],
}
_API_PREFIX = re.compile(r"^/v[0-9.]+(?=/)")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    images: frozenset[str]
    requests: list[tuple[str, str]]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def address_string(self) -> str:  # a unix socket has no client address
        return "unix"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = _API_PREFIX.sub("", urlsplit(self.path).path)
        self.server.requests.append((self.command, self.path))
        image = re.fullmatch(r"/images/(.+)/json", path)
        if path == "/_ping":
            self._send(200, b"OK", "text/plain; charset=utf-8")
        elif path == "/version":
            self._json(200, _VERSION)
        elif image is not None:
            name = unquote(image.group(1))
            if name in self.server.images:
                self._json(200, {"Id": "sha256:" + "0" * 64, "RepoTags": [name]})
            else:
                self._json(404, {"message": f"no such image: {name}: No such image: {name}"})
        elif path == "/images/create" and self.command == "POST":
            self._json(500, {"message": NO_REGISTRY})
        else:
            self._json(500, {"message": f"not recorded: {self.command} {path}"})

    def _json(self, status: int, body: object) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Api-Version", "1.41")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class OfflineDockerEngine:
    """`with OfflineDockerEngine(path) as engine:` serves on unix://path; `engine.requests` lists
    (method, path) of every request it got."""

    def __init__(self, socket_path: Path, images: frozenset[str] = frozenset()) -> None:
        self.socket_path = socket_path
        self._server = _Server(str(socket_path), _Handler)
        self._server.images = images
        self._server.requests = []
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        return list(self._server.requests)

    def pulled(self) -> list[str]:
        """Images it was asked to pull, as repository:tag."""
        names = []
        for method, path in self.requests:
            if method == "POST" and "/images/create" in path:
                query = dict(
                    pair.split("=", 1) for pair in urlsplit(path).query.split("&") if "=" in pair
                )
                names.append(f"{unquote(query['fromImage'])}:{unquote(query.get('tag', ''))}")
        return names

    def __enter__(self) -> OfflineDockerEngine:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.socket_path.unlink(missing_ok=True)

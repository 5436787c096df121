"""A scripted HTTP server on 127.0.0.1 for the client tests.

Each test scripts the exact replies it needs per method and path. A reply is a
status, headers and a body (optionally gzipped), or a broken exchange. With
``close`` the connection drops without a response, with ``hang`` nothing is sent
until the server stops, and with ``truncate`` the body is shorter than its
Content-Length. Replies for a route are used in order and the last one repeats.
An unscripted request gets HTTP 418.
"""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

_HANG_LIMIT = 10.0
_TRUNCATED_EXTRA_BYTES = 50


@dataclass
class Reply:
    """One scripted response."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    gzip: bool = False
    action: str | None = None


@dataclass
class Seen:
    """One request as the server received it. Header names are lowercase."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client_port: int

    def json(self) -> Any:
        return json.loads(self.body)


def encode_body(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


class LoopbackServer:
    """A threaded HTTP/1.1 server bound to 127.0.0.1 on a free port.

    With ``tls`` (certificate and key PEM paths) it serves https.
    """

    def __init__(self, *, tls: tuple[Path, Path] | None = None) -> None:
        self.requests: list[Seen] = []
        self.released = threading.Event()
        self._routes: dict[tuple[str, str], list[Reply]] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self._scheme = "https"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{self._scheme}://{host}:{port}"

    def script(self, method: str, path: str, *replies: Reply) -> None:
        """Set the replies for ``method`` and ``path``. They are used in order and the last
        one repeats."""
        with self._lock:
            self._routes[(method, path)] = list(replies)

    def seen(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """Return the received requests, optionally only those for one method and path."""
        with self._lock:
            return [
                request for request in self.requests
                if (method is None or request.method == method)
                and (path is None or request.path == path)
            ]

    def next_reply(self, request: Seen) -> Reply:
        with self._lock:
            self.requests.append(request)
            replies = self._routes.get((request.method, request.path))
            if not replies:
                return Reply(418, {"errors": [f"no reply scripted for {request.path}"]})
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes. Without TCP_NODELAY each reply
    # waits for the client's delayed ACK, which cost about 40 ms per request here.
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:
        """Keep test output quiet."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = Seen(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            client_port=self.client_address[1],
        )
        owner: LoopbackServer = self.server.owner  # type: ignore[attr-defined]
        self._answer(owner.next_reply(request), owner)

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def _answer(self, reply: Reply, owner: LoopbackServer) -> None:
        if reply.action in ("close", "hang"):
            if reply.action == "hang":
                owner.released.wait(_HANG_LIMIT)
            self.close_connection = True
            return
        payload = encode_body(reply.body)
        if reply.gzip:
            payload = gzip.compress(payload)
        headers = {"Content-Type": "application/json"} if reply.body is not None else {}
        if reply.gzip:
            headers["Content-Encoding"] = "gzip"
        headers.update(reply.headers)
        announced = len(payload)
        if reply.action == "truncate":
            announced += _TRUNCATED_EXTRA_BYTES
        self.send_response(reply.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        self.wfile.write(payload)
        if reply.action == "truncate":
            self.close_connection = True


def refused_url() -> str:
    """Return an http URL on 127.0.0.1 whose port refuses connections."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"http://127.0.0.1:{port}"



def make_self_signed_certificate(folder: Path) -> tuple[Path, Path] | None:
    """Write a self-signed certificate for 127.0.0.1 with the openssl CLI, or return None."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    certificate, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(certificate), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return certificate, key

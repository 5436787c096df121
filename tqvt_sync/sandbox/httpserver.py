"""Threaded HTTP/1.1 server base shared by the ThreatQ and VirusTotal simulators.

A simulator subclasses ``SimulatorServer`` and implements ``handle`` (turn a
``Request`` into a ``Response``) and ``error_response`` (the API's own error body,
used by the "status" fault). The base class binds 127.0.0.1 on an ephemeral port,
keeps connections alive, records every request, sleeps ``latency`` seconds before
each request and applies the faults armed in ``faults``.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import socketserver
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl, urlsplit

from tqvt_sync.clock import Clock, SystemClock
from tqvt_sync.sandbox.faults import Fault, FaultInjector

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"
_GZIP_LEVEL = 5
_IDLE_CONNECTION_TIMEOUT = 60.0
# Seconds between checks for a stop request; stop() waits up to this long.
_POLL_INTERVAL = 0.01
_HTML_PAGE = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


@dataclass(frozen=True)
class RequestRecord:
    """One request as a simulator received it.

    ``status`` is None when the connection was shut down without a response, and
    ``time`` comes from the simulator's clock when the request arrived.
    """

    method: str
    path: str
    query: dict[str, str]
    status: int | None
    time: datetime
    body_size: int


class RequestLog:
    """Thread-safe, append-only list of ``RequestRecord``."""

    def __init__(self) -> None:
        self._records: list[RequestRecord] = []
        self._lock = threading.Lock()

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def count(self, method: str | None = None, path_prefix: str | None = None) -> int:
        """Count the records with this method and a path that starts with ``path_prefix``."""
        return sum(
            1
            for record in self.snapshot()
            if (method is None or record.method == method.upper())
            and (path_prefix is None or record.path.startswith(path_prefix))
        )

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __iter__(self):
        return iter(self.snapshot())

    def __getitem__(self, index: int) -> RequestRecord:
        with self._lock:
            return self._records[index]


@dataclass
class Request:
    """A parsed HTTP request; ``query`` keeps the last value of a repeated parameter."""

    method: str
    path: str
    query: dict[str, str]
    headers: Message
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return a header value; header names are case-insensitive."""
        return self.headers.get(name, default)


@dataclass
class Response:
    """A response to send; ``compressible`` allows gzip when the client accepts it."""

    status: int
    body: bytes = b""
    content_type: str = JSON_CONTENT_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    compressible: bool = False


def json_response(status: int, payload: object, *, compressible: bool = False) -> Response:
    """Build a JSON response."""
    return Response(status, json.dumps(payload).encode(), compressible=compressible)


def html_response(status: int) -> Response:
    """Build the HTML error page that a reverse proxy sends, for the "html" fault."""
    reason = _reason(status)
    page = _HTML_PAGE.format(status=status, reason=reason).encode()
    return Response(status, page, content_type="text/html")


def _reason(status: int) -> str:
    return BaseHTTPRequestHandler.responses.get(status, ("Error",))[0]


class SimulatorServer:
    """Lifecycle, request record, latency and faults of a simulator.

    Subclasses implement ``handle`` and ``error_response``. ``url_suffix`` is
    appended to ``http://127.0.0.1:PORT`` to form ``url``. A server-side
    ``ssl.SSLContext`` assigned to ``tls_context`` before ``start()`` makes the
    simulator serve https instead, and ``url`` then starts with ``https://``.
    """

    url_suffix = ""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.requests = RequestLog()
        self.latency = 0.0
        self.faults = FaultInjector()
        self.tls_context: ssl.SSLContext | None = None
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def error_response(self, status: int, message: str) -> Response:
        raise NotImplementedError

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.url_suffix}"

    def start(self) -> Self:
        """Bind 127.0.0.1 on an ephemeral port and serve from a daemon thread."""
        if self._httpd is not None:
            return self
        httpd = _Server(("127.0.0.1", 0), _Handler)
        if self.tls_context is not None:
            # The handshake runs in accept(); a client that rejects the certificate
            # makes accept() fail, which the server loop ignores.
            httpd.socket = self.tls_context.wrap_socket(httpd.socket, server_side=True)
        httpd.simulator = self
        self._httpd = httpd
        name = f"{type(self).__name__}:{self.port}"
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(_POLL_INTERVAL,), name=name
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and shut down every open keep-alive connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            _shutdown_socket(connection)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def _respond(self, request: Request) -> Response:
        """Call ``handle`` and turn an unexpected exception into a 500 error body."""
        try:
            return self.handle(request)
        except Exception:
            logger.exception("simulator failed on %s %s", request.method, request.path)
            return self.error_response(500, "Internal Server Error")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    simulator: SimulatorServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name with getfqdn(), a DNS lookup
        # that a loopback server does not need.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = self.server_address[1]

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that gave up on a stalled or faulted response resets the connection,
        # which the base class would print as a traceback on stderr.
        if isinstance(sys.exc_info()[1], ConnectionError):
            logger.debug("connection from %s was reset", client_address)
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tqvt-sandbox"
    timeout = _IDLE_CONNECTION_TIMEOUT
    # Headers and body go out in separate writes; with Nagle's algorithm on, the
    # client's delayed ACK would hold the body back by about 40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.simulator._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.simulator._untrack(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self) -> None:
        simulator = self.server.simulator
        arrived = simulator.clock.now()
        body = self._read_body()
        if body is None:
            return
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        request = Request(self.command, parts.path, query, self.headers, body)
        self._serve(simulator, request, arrived)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def _serve(self, simulator: SimulatorServer, request: Request, arrived: datetime) -> None:
        if simulator.latency > 0:
            time.sleep(simulator.latency)
        selection = simulator.faults.select(request.method, request.path)
        if selection.delay > 0:
            time.sleep(selection.delay)
        fault = selection.fault
        kind = fault.kind if fault else None

        if kind == "reset_before":
            self._record(simulator, request, arrived, None)
            self._reset()
            return
        response = self._build_response(simulator, request, fault)
        if kind == "reset_after_commit":
            self._record(simulator, request, arrived, None)
            self._reset()
            return

        # The record is appended before the response is sent, so a client that has
        # received its response always finds its request in the log.
        self._record(simulator, request, arrived, response.status)
        if kind == "stall_after_commit" and fault is not None:
            time.sleep(fault.seconds)
        self._send(response, request)

    def _build_response(
        self, simulator: SimulatorServer, request: Request, fault: Fault | None
    ) -> Response:
        kind = fault.kind if fault else None
        if kind == "status" and fault is not None and fault.status is not None:
            return simulator.error_response(fault.status, _reason(fault.status))
        if kind == "html" and fault is not None and fault.status is not None:
            return html_response(fault.status)
        if kind == "malformed":
            return Response(200, b"<!-- this is not JSON -->\n<p>Service temporarily degraded</p>")
        response = simulator._respond(request)
        if kind == "status_after_commit" and fault is not None and fault.status is not None:
            return simulator.error_response(fault.status, _reason(fault.status))
        if kind == "truncated":
            return Response(200, response.body[: len(response.body) // 2])
        return response

    def _record(
        self, simulator: SimulatorServer, request: Request, arrived: datetime, status: int | None
    ) -> None:
        record = RequestRecord(
            request.method, request.path, request.query, status, arrived, len(request.body)
        )
        simulator.requests.append(record)

    def _send(self, response: Response, request: Request) -> None:
        body = response.body
        headers = dict(response.headers)
        accepted = (request.header("Accept-Encoding") or "").lower()
        if response.compressible and "gzip" in accepted:
            body = gzip.compress(body, compresslevel=_GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        try:
            self.send_response(response.status)
            if response.status != 204:
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if body and response.status != 204:
                self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def _reset(self) -> None:
        self.close_connection = True
        _shutdown_socket(self.connection)

    def _read_body(self) -> bytes | None:
        """Read the request body; on a framing error send 400, close and return None."""
        try:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                return self._read_chunked()
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError(f"negative Content-Length {length}")
            return self.rfile.read(length) if length else b""
        except ValueError as error:
            self.close_connection = True
            self.send_error(400, f"Invalid request body framing: {error}")
            return None

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"x", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)


def _shutdown_socket(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass

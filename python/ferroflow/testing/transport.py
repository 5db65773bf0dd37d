"""The HTTP side of the mock server: a thread per connection, all of which it can close and join on
stop, handing every request to one callable (:meth:`MockLLMServer._handle`)."""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Callable, Dict, List, Tuple


class Abort(Exception):
    """Drop the connection without (finishing) an answer."""


class Server(HTTPServer):
    """An HTTP server with a thread per connection that it can close all of, and join, on stop."""

    # Clients under load open many connections at once; socketserver's default backlog of 5
    # drops the SYNs of the rest, which then wait out TCP's retransmission backoff (1 s, 3 s,
    # 7 s, ...), up to a client's connect timeout.
    request_queue_size = 1024

    def __init__(self, address: Tuple[str, int], dispatch: Callable[[Handler], None]) -> None:
        self.dispatch = dispatch
        self.stopping = threading.Event()
        self.conn_lock = threading.Lock()
        self.connections: Dict[threading.Thread, socket.socket] = {}
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind also resolves the host's FQDN, which can be slow; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.stopping.is_set():
            self.shutdown_request(request)
            return
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), name="ferroflow-mock-conn", daemon=True
        )
        with self.conn_lock:
            self.connections[thread] = request
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - reported (or, for a connection error, ignored) like socketserver does
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self.conn_lock:
                self.connections.pop(threading.current_thread(), None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away, or stop() closed the connection
        traceback.print_exc()

    def close_connections(self) -> List[threading.Thread]:
        """Shut every open connection down (unblocking their threads); return those threads."""
        with self.conn_lock:
            items = list(self.connections.items())
        for _, sock in items:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return [thread for thread, _ in items]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ferroflow-mock/1"
    sys_version = ""
    server: Server

    def setup(self) -> None:
        super().setup()
        # Streamed chunks must leave at once, and a header write followed by a body write must not
        # wait for a delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.dispatch(self)

    def do_POST(self) -> None:
        self.server.dispatch(self)

    def do_PUT(self) -> None:
        self.server.dispatch(self)

    def do_PATCH(self) -> None:
        self.server.dispatch(self)

    def do_DELETE(self) -> None:
        self.server.dispatch(self)

    def read_body(self) -> bytes:
        """The request's body (``Content-Length`` or chunked); empty when it has none, or when its
        framing is broken (the connection then closes after the answer)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: List[bytes] = []
            while True:
                try:
                    size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                except ValueError:
                    self.close_connection = True
                    return b""
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            return self.rfile.read(int(length))
        except ValueError:
            self.close_connection = True
            return b""

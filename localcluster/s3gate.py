"""An HTTP relay in front of the local S3 server that can cut the store off at a chosen request.

Fault injection for tests, driven by what the client actually sends rather than by timing:

    with S3Gate(cluster.s3_endpoint, hold_after=S3Gate.completes(state_key)) as gate:
        ... point the runner's output endpoint at g.endpoint ...

- `hold_after(method, path)`: once a matching request has been relayed whole, every later request
  (any connection) is held unanswered, so the client can make no further progress in the store
  until it is killed or the gate closes. Deterministic "stop right after step k was saved".
- `refuse_at(method, path)`: a matching request is not relayed; the store goes down at that moment:
  every open connection is closed, and every later one is closed as soon as it is accepted
  (counted in `dropped`, so a test can see the client's retries) until `recover()` brings the
  store back (requests are relayed again, the rule is spent).

The relay parses only request framing (request line, headers, Content-Length); bytes pass through
unchanged, so SigV4 signatures (which cover the Host header the client sent) stay valid. Requests
with `Transfer-Encoding: chunked` are not framed (the minio SDK sends Content-Length).
"""

from __future__ import annotations

import socket
import threading
import urllib.parse
from collections.abc import Callable
from typing import Self

Rule = Callable[[str, str], bool]


class S3Gate:
    def __init__(
        self, upstream: str, *, hold_after: Rule | None = None, refuse_at: Rule | None = None
    ) -> None:
        url = urllib.parse.urlsplit(upstream)
        self.upstream = (url.hostname or "127.0.0.1", url.port or 80)
        self.hold_after, self.refuse_at = hold_after, refuse_at
        self.requests: list[tuple[str, str]] = []  # relayed, in order
        self.held: list[tuple[str, str]] = []
        self.refused: list[tuple[str, str]] = []
        self.dropped = 0  # connections closed unanswered once the refuse rule tripped
        self.tripped = threading.Event()  # the hold or refuse rule matched
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True, name="s3gate").start()

    @staticmethod
    def completes(key: str) -> Rule:
        """The request that makes object `key` visible: a plain PUT, or the POST that completes a
        multipart upload (the SDK uploads larger objects in parts, possibly in parallel)."""

        def rule(method: str, path: str) -> bool:
            where, _, query = path.partition("?")
            if not where.endswith("/" + key):
                return False
            if method == "PUT":
                return "partNumber=" not in query and "uploadId=" not in query
            return method == "POST" and "uploadId=" in query

        return rule

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def recover(self) -> None:
        """The store is back: relay every request from now on (the refuse rule is spent)."""
        self.refuse_at = None
        self.tripped.clear()

    def close(self) -> None:
        self._closed.set()
        self._down()

    def _down(self, listener: bool = True) -> None:
        with self._lock:
            for s in [self._listener] * listener + self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._sockets.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.tripped.is_set() and self.refuse_at is not None:
                self.dropped += 1
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        """Relay one request at a time, deciding at each request line."""
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = client.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = (lines[0].split(" ") + ["", ""])[:2]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:])
                }
                request = (method, urllib.parse.unquote(path))
                if self.tripped.is_set() and self.hold_after is not None:
                    self.held.append(request)
                    self._closed.wait()
                    return
                if self.refuse_at is not None and self.refuse_at(*request):
                    self.refused.append(request)
                    self.tripped.set()
                    self._down(listener=False)
                    return
                server.sendall(head + b"\r\n\r\n")
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    self._pump(client, server)  # not framed: pass the rest through
                    return
                left = int(headers.get("content-length") or 0)
                while left > 0:
                    if not buf:
                        buf = client.recv(min(65536, left))
                        if not buf:
                            return
                    part, buf = buf[:left], buf[left:]
                    server.sendall(part)
                    left -= len(part)
                self.requests.append(request)
                if self.hold_after is not None and self.hold_after(*request):
                    self.tripped.set()
        except OSError:
            pass

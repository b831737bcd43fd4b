"""A raw HTTP/1.1 client for tests about the connection itself: several requests on one socket."""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class WireResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class KeepAliveConnection:
    """One TCP connection; each request is written on it and its response read from it, in turn.

    A server that closed the connection shows as ConnectionError (reset, or EOF before a response).
    """

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.sock = socket.create_connection((self.host, parts.port or 80), timeout=timeout_s)
        self._buffer = b""

    def request(self, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None) -> WireResponse:
        lines = [f"{method} {path} HTTP/1.1", f"host: {self.host}", f"content-length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return self._read_response()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> KeepAliveConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _read_exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._fill()
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self._buffer += chunk

    def _read_response(self) -> WireResponse:
        status_line, *header_lines = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                chunk = self._read_exactly(size + 2)[:size]
                if size == 0:
                    break
                body += chunk
        else:
            body = self._read_exactly(int(headers.get("content-length", "0")))
        return WireResponse(int(status_line.split()[1]), headers, body)

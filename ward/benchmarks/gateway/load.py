"""A closed-loop HTTP/1.1 load generator: ``clients`` keep-alive connections, each sending the next
request as soon as the previous answer is read. Written on asyncio streams, with a prebuilt request
and a minimal response parser, so that the client costs the shared CPU as little as possible."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class LoadResult:
    clients: int
    requests: int
    seconds: float
    latencies_s: list[float]  # per request, send to last byte of the answer
    statuses: dict[int, int]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] * 1000


def build_request(host: str, path: str, api_key: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _client(host: str, port: int, request: bytes, count: int, latencies: list[float], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def run_load(host: str, port: int, request: bytes, *, clients: int, requests: int) -> LoadResult:
    """Sends ``requests`` requests over ``clients`` connections (each sends requests // clients)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    per_client = max(1, requests // clients)
    started = time.perf_counter()
    await asyncio.gather(*(_client(host, port, request, per_client, latencies, statuses) for _ in range(clients)))
    return LoadResult(clients, len(latencies), time.perf_counter() - started, latencies, statuses)

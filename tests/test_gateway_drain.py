"""SIGTERM drains the gateway: a real ``ward gateway`` process, a slow fake worker, streams in flight.

After SIGTERM the gateway refuses new work (503 ``server_shutdown`` with Retry-After, /readyz 503),
lets requests finish within the grace, then ends the rest explicitly: a stream gets an OpenAI-shaped
error event and ``data: [DONE]`` in a well-formed chunked body, a non-streamed request a 503. The
audit log records each with the server's own status and reason (503 ``server_shutdown``), none as
a client disconnect (499), and the process exits 0.
"""
from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
from e2e_support import ProcessStack, wait_until

from gateway.audit.reader import AuditReader, ReadScope, RecordFilter
from gateway.audit.service import create_audit_engine

MODEL = "fake-chat"
API_KEY = "sk-drain-test-key-0123456789"
TEAM = "drain"
GRACE_S = 2.0
TOKEN_DELAY_S = 0.05  # a 400-token stream takes 20 s: far longer than the grace


def chat(max_tokens: int, *, stream: bool) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "write the discharge summary"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": stream,
    }


class StreamReader(threading.Thread):
    """One streamed request, read event by event; keeps the events, its request id and how it ended."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.events: list = []
        self.request_id: str | None = None
        self.error: BaseException | None = None
        self.ended_at: float | None = None

    def run(self) -> None:
        headers = {"authorization": f"Bearer {API_KEY}"}
        try:
            with httpx.Client(timeout=60) as client:
                with client.stream("POST", f"{self.url}/v1/chat/completions", json=self.body, headers=headers) as r:
                    self.request_id = r.headers.get("x-request-id")
                    assert r.status_code == 200, r.read()
                    for line in r.iter_lines():  # raises on a truncated chunked body
                        if line.startswith("data: "):
                            payload = line[len("data: "):]
                            self.events.append(payload if payload == "[DONE]" else json.loads(payload))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        self.ended_at = time.monotonic()

    def tokens(self) -> int:
        return sum(1 for e in self.events if isinstance(e, dict) and e.get("choices") and e["choices"][0]["delta"].get("content"))


def audit_records(gateway) -> dict[str, dict]:
    engine = create_audit_engine(gateway.database_url)
    try:
        scope = ReadScope(teams=None, content=True, kinds=None)
        records = AuditReader(engine).iter_records(RecordFilter(kind="request"), scope, through_seq=10**12)
        return {r["id"]: r for r in records}
    finally:
        engine.dispose()


@pytest.fixture
def stack(tmp_path):
    procs = ProcessStack(tmp_path)
    try:
        worker = procs.start_fake_worker("slow-worker", MODEL, "--token-delay", str(TOKEN_DELAY_S), "--max-model-len", "4096")
        procs.worker = worker
        yield procs
    finally:
        procs.close()


def start_gateway(stack: ProcessStack, grace_s: float = GRACE_S):
    return stack.start_gateway({MODEL: [stack.worker.address]}, config={"api_keys": {API_KEY: TEAM}},
                               args=["--drain-grace", str(grace_s)])


def test_sigterm_refuses_new_work_finishes_short_requests_and_ends_long_streams_with_an_error_event_and_done(stack):
    gateway = start_gateway(stack)
    long_streams = [StreamReader(gateway.url, chat(400, stream=True)) for _ in range(3)]
    for reader in long_streams:
        reader.start()
    assert wait_until(lambda: all(r.tokens() >= 3 for r in long_streams), 30), "the streams never got going"
    non_streamed: dict = {}

    def post_non_streamed() -> None:
        with httpx.Client(timeout=60, headers={"authorization": f"Bearer {API_KEY}"}) as client:
            non_streamed["response"] = client.post(f"{gateway.url}/v1/chat/completions", json=chat(400, stream=False))

    blocking = threading.Thread(target=post_non_streamed, daemon=True)
    blocking.start()
    short = StreamReader(gateway.url, chat(12, stream=True))  # 0.6 s: finishes within the grace
    short.start()
    assert wait_until(lambda: short.tokens() >= 1, 10)
    time.sleep(0.2)  # the non-streamed request is in flight too

    gateway.process.send_signal(signal.SIGTERM)
    sigterm_at = time.monotonic()
    with httpx.Client(timeout=5, headers={"authorization": f"Bearer {API_KEY}"}) as client:
        ready = client.get(f"{gateway.url}/readyz")
        refused = client.post(f"{gateway.url}/v1/chat/completions", json=chat(4, stream=False))
    assert ready.status_code == 503 and ready.json()["draining"] is True
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "server_shutdown"
    assert int(refused.headers["retry-after"]) >= 1

    assert gateway.process.wait(timeout=GRACE_S + 15) == 0  # exits 0, not killed by its own signal
    for reader in [*long_streams, short]:
        reader.join(timeout=5)
    blocking.join(timeout=5)

    # The short stream finished normally during the drain.
    assert short.error is None and short.events[-1] == "[DONE]"
    assert short.events[-2]["choices"] == [] or short.events[-2]["choices"][0]["finish_reason"] == "length"
    # Each long stream: tokens, then one server_shutdown error event, then [DONE], in a complete body,
    # ended by the grace (not before it, not by the hard stop after it).
    for reader in long_streams:
        assert reader.error is None, reader.error
        assert reader.tokens() >= 3 and reader.tokens() < 400
        *_, last_event, done = reader.events
        assert done == "[DONE]"
        assert last_event["error"]["code"] == "server_shutdown" and last_event["error"]["type"] == "server_error"
        assert set(last_event["error"]) == {"message", "type", "param", "code"}
        assert GRACE_S - 0.5 <= reader.ended_at - sigterm_at <= GRACE_S + 4
    # The non-streamed request in flight got the 503 as its answer.
    answer = non_streamed["response"]
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "server_shutdown"

    records = audit_records(gateway)
    for reader in long_streams:
        record = records[reader.request_id]
        assert record["complete"] and record["status"] == "error" and record["http_status"] == 503
        assert record["error"]["code"] == "server_shutdown"
    assert records[short.request_id]["status"] == "ok" and records[short.request_id]["http_status"] == 200
    for response in (answer, refused):
        record = records[response.headers["x-request-id"]]
        assert record["http_status"] == 503 and record["error"]["code"] == "server_shutdown"
    assert not [r for r in records.values() if r["http_status"] == 499 or r["status"] == "cancelled"]


def test_sigterm_with_nothing_in_flight_exits_0_at_once(stack):
    gateway = start_gateway(stack, grace_s=30)
    with httpx.Client(timeout=10, headers={"authorization": f"Bearer {API_KEY}"}) as client:
        assert client.post(f"{gateway.url}/v1/chat/completions", json=chat(3, stream=False)).status_code == 200
    started = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(timeout=15) == 0
    assert time.monotonic() - started < 10  # the 30 s grace is not waited out when nothing runs

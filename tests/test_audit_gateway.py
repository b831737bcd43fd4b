"""End to end: the gateway with AuditHooks, a fake worker process, the official openai client.

A mixed run (answers, streams, cancelled streams, 401s, 429s, 400s, a 404) leaves exactly one
record per request, with the right fields, in a chain that verifies. The kill -9 and three-gateway
tests run real processes serving the app ``ward gateway`` builds (identity, quotas and audit on).
"""
from __future__ import annotations

import pathlib
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from gateway.app import create_app
from gateway.audit.hooks import AuditHooks
from gateway.audit.reader import AuditReader, ReadScope, RecordFilter
from gateway.audit.service import build_audit_services, trusted_keys, resolve_paths
from gateway.audit.settings import AuditSettings
from gateway.audit.verify import verify_chain
from gateway.http.errors import RateLimited
from gateway.hooks import HookChain, NoopHooks
from gateway.settings import GatewaySettings
from ports import free_port
from test_audit_support import db_url, pg_module_url  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = "fake-chat"
CARDIO_KEY = "key-cardiology-0001"
RADIO_KEY = "key-radiology-0002"  # its team is over quota: every request gets 429
ALL = ReadScope(teams=None, content=True, kinds=None)


class OverQuota(NoopHooks):
    """Stands in for the quota layer: refuses the radiology team."""

    async def before_dispatch(self, ctx) -> None:
        if ctx.principal is not None and ctx.principal.team == "radiology":
            raise RateLimited("Team radiology is over its token quota.", code="quota_exceeded", headers={"retry-after": "30"})


@pytest.fixture(scope="module")
def fake_worker():
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_worker.py"), "--model", MODEL, "--natural-length", "12", "--token-delay", "0.03"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline().split()
    assert line and line[0] == "PORT", "fake worker did not start"
    yield int(line[1])
    process.terminate()
    process.wait(timeout=10)


class Gateway:
    """The gateway app served by uvicorn on a free port, in a background thread."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "gateway did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _wait_ready(base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(f"{base}/readyz").status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError("no ready worker")


def _mixed_run(base: str) -> dict[str, dict]:
    """Sends the mix; returns what each request's client saw, by x-request-id."""
    good = openai.OpenAI(base_url=f"{base}/v1", api_key=CARDIO_KEY, max_retries=0)
    limited = openai.OpenAI(base_url=f"{base}/v1", api_key=RADIO_KEY, max_retries=0)
    stranger = openai.OpenAI(base_url=f"{base}/v1", api_key="not-a-key", max_retries=0)
    seen: dict[str, dict] = {}
    messages = lambda i: [{"role": "user", "content": f"question {i} about patient jane@example.org"}]  # noqa: E731

    for i in range(3):  # answers
        raw = good.chat.completions.with_raw_response.create(model=MODEL, messages=messages(i), max_tokens=8, temperature=0.0)
        completion = raw.parse()
        choice = completion.choices[0]
        seen[raw.headers["x-request-id"]] = {
            "kind": "ok", "text": choice.message.content, "finish": choice.finish_reason, "usage": completion.usage, "prompt": messages(i),
        }
    raw = good.completions.with_raw_response.create(model=MODEL, prompt="plain text prompt", max_tokens=4)
    completion = raw.parse()
    seen[raw.headers["x-request-id"]] = {
        "kind": "ok", "text": completion.choices[0].text, "finish": completion.choices[0].finish_reason, "usage": completion.usage, "prompt": "plain text prompt",
    }

    for i in range(3, 6):  # streams read to [DONE]
        with good.chat.completions.create(model=MODEL, messages=messages(i), stream=True, stream_options={"include_usage": True}) as stream:
            text, usage, finish = "", None, None
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
                usage = chunk.usage or usage
            seen[stream.response.headers["x-request-id"]] = {"kind": "ok", "text": text, "finish": finish, "usage": usage, "prompt": messages(i)}

    for i in range(6, 8):  # streams the client abandons after the first chunk
        stream = good.chat.completions.create(model=MODEL, messages=messages(i), stream=True)
        next(iter(stream))
        stream.close()
        seen[stream.response.headers["x-request-id"]] = {"kind": "cancelled"}

    for client, kind, call in (
        (stranger, "401", lambda c: c.chat.completions.create(model=MODEL, messages=messages(8))),
        (stranger, "401", lambda c: c.chat.completions.create(model=MODEL, messages=messages(9), stream=True)),
        (limited, "429", lambda c: c.chat.completions.create(model=MODEL, messages=messages(10))),
        (limited, "429", lambda c: c.chat.completions.create(model=MODEL, messages=messages(11), stream=True)),
        (good, "400", lambda c: c.chat.completions.create(model=MODEL, messages=messages(12), temperature=5)),
        (good, "400", lambda c: c.chat.completions.create(model=MODEL, messages=[])),
        (good, "404", lambda c: c.chat.completions.create(model="no-such-model", messages=messages(13))),
    ):
        with pytest.raises(openai.APIStatusError) as failure:
            call(client)
        assert str(failure.value.status_code) == kind
        seen[failure.value.response.headers["x-request-id"]] = {"kind": kind}
    return seen


def test_mixed_openai_run_leaves_one_complete_record_per_request(db_url, fake_worker, tmp_path):
    settings = GatewaySettings(models={MODEL: {"workers": [f"127.0.0.1:{fake_worker}"]}}, api_keys={CARDIO_KEY: "cardiology", RADIO_KEY: "radiology"})
    audit_settings = AuditSettings(database_url=db_url)
    services = build_audit_services(audit_settings, tmp_path)
    app = create_app(settings, hooks=HookChain([OverQuota(), AuditHooks(services.log)]))
    reader = AuditReader(services.engine)
    with Gateway(app) as base:
        _wait_ready(base)
        seen = _mixed_run(base)
        # Cancelled streams are completed when the gateway notices the disconnect: wait for that.
        deadline = time.monotonic() + 20
        while True:
            records = {r["id"]: r for r in reader.iter_records(RecordFilter(), ALL, through_seq=10**12)}
            if all(records.get(rid, {}).get("complete") for rid in seen) or time.monotonic() > deadline:
                break
            time.sleep(0.05)

    assert set(records) == set(seen)  # exactly one record per request, none missing, none extra
    for rid, client_saw in seen.items():
        record = records[rid]
        assert record["complete"], record
        kind = client_saw["kind"]
        if kind == "ok":
            assert (record["status"], record["http_status"], record["finish_reason"]) == ("ok", 200, client_saw["finish"])
            assert record["response"] == client_saw["text"] and record["prompt"] == client_saw["prompt"]
            assert (record["prompt_tokens"], record["completion_tokens"]) == (client_saw["usage"].prompt_tokens, client_saw["usage"].completion_tokens)
            assert record["received_at"] <= record["first_token_at"] <= record["finished_at"]
            assert record["principal"]["team"] == "cardiology" and record["principal"]["auth_method"] == "api_key"
            assert record["model"] == MODEL and record["worker"] == f"127.0.0.1:{fake_worker}"
        elif kind == "cancelled":
            assert record["status"] == "cancelled" and len(record["entries"]) == 2  # opened, then completed
        elif kind == "401":
            assert (record["status"], record["http_status"], record["team"]) == ("rejected", 401, None)
            assert record["error"]["code"] == "invalid_api_key"
        elif kind == "429":
            assert (record["status"], record["http_status"], record["team"]) == ("rejected", 429, "radiology")
            assert record["error"]["code"] == "quota_exceeded"
        else:
            assert record["status"] == "error" and str(record["http_status"]) == kind
        assert record["endpoint"] in ("/v1/chat/completions", "/v1/completions")
        assert record["client_address"] == "127.0.0.1"
    streams = [r for r in records.values() if len(r["entries"]) == 2]
    assert len(streams) == 3 + 2  # the answered and the abandoned streams were opened before their first byte
    report = verify_chain(services.engine, trusted_keys(audit_settings, resolve_paths(audit_settings, tmp_path)))
    assert report.ok, [p.describe() for p in report.problems]
    services.engine.dispose()


def test_audit_database_down_means_503_and_nothing_served(pg_module_url, fake_worker, tmp_path):
    from test_audit_support import reset_log, set_database_available

    settings = GatewaySettings(models={MODEL: {"workers": [f"127.0.0.1:{fake_worker}"]}}, api_keys={CARDIO_KEY: "cardiology"})
    from gateway.audit.service import create_audit_engine

    engine = create_audit_engine(pg_module_url)
    reset_log(engine)  # a fresh log of its own: this test's gateway makes its own key
    engine.dispose()
    services = build_audit_services(AuditSettings(database_url=pg_module_url, write_timeout_s=2), tmp_path)
    app = create_app(settings, hooks=AuditHooks(services.log))
    with Gateway(app) as base:
        _wait_ready(base)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=CARDIO_KEY, max_retries=0)
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        set_database_available(pg_module_url, False)
        try:
            for stream in (False, True):
                with pytest.raises(openai.APIStatusError) as failure:
                    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=stream)
                assert failure.value.status_code == 503 and failure.value.code == "audit_unavailable"
        finally:
            set_database_available(pg_module_url, True)
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "again"}], max_tokens=2)
    records = list(AuditReader(services.engine).iter_records(RecordFilter(), ALL, through_seq=10**12))
    assert [r["status"] for r in records] == ["ok", "ok"]  # nothing was served unaudited
    services.engine.dispose()


GATEWAY_SCRIPT = r"""
import sys, uvicorn
from gateway.cli import build_app
from gateway.settings import GatewaySettings

db_url, data_dir, worker_port, port, key = sys.argv[1:6]
settings = GatewaySettings(
    models={"fake-chat": {"workers": [f"127.0.0.1:{worker_port}"]}},
    api_keys={key: "cardiology"},
    database_url=db_url,
    data_dir=data_dir,
    quota={"redis_url": None},
)
uvicorn.run(build_app(settings), host="127.0.0.1", port=int(port), log_level="warning")
"""  # the app `ward gateway` serves: identity, quotas and the audit log on


def test_sigkill_of_the_gateway_under_streaming_load(db_url, fake_worker, tmp_path):
    import signal

    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-c", GATEWAY_SCRIPT, db_url, str(tmp_path), str(fake_worker), str(port), CARDIO_KEY], cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and gateway.poll() is None, "gateway did not start"
        time.sleep(0.1)

    started: set[str] = set()  # got the response head: the stream began
    done: set[str] = set()  # got data: [DONE]
    mid_way: set[str] = set()  # got its first content chunk once enough streams were done
    kill_now = threading.Event()
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"client {n}"}], "stream": True}
        headers = {"authorization": f"Bearer {CARDIO_KEY}"}
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                try:
                    with http.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers) as response:
                        rid = response.headers["x-request-id"]
                        with lock:
                            started.add(rid)
                        for line in response.iter_lines():
                            if line == "data: [DONE]":
                                with lock:
                                    done.add(rid)
                            elif '"content"' in line:
                                with lock:
                                    if len(done) >= 24 and not kill_now.is_set():
                                        # Eleven more tokens, 30 ms apart, are still to come: a kill
                                        # now must catch this stream before its completion commits.
                                        mid_way.add(rid)
                                        kill_now.set()
                except httpx.HTTPError:
                    return  # the gateway is gone

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(8)]
    for thread in threads:
        thread.start()
    while not kill_now.wait(0.02):
        assert time.monotonic() < deadline + 60 and gateway.poll() is None
    gateway.send_signal(signal.SIGKILL)
    gateway.wait(timeout=10)
    stop.set()
    for thread in threads:
        thread.join(timeout=15)

    from gateway.audit.service import create_audit_engine

    engine = create_audit_engine(db_url)
    try:
        records = {r["id"]: r for r in AuditReader(engine).iter_records(RecordFilter(), ALL, through_seq=10**12)}
        audit_settings = AuditSettings(database_url=db_url)
        report = verify_chain(engine, trusted_keys(audit_settings, resolve_paths(audit_settings, tmp_path)))
    finally:
        engine.dispose()
    assert done <= {rid for rid, r in records.items() if r["complete"] and r["status"] == "ok"}  # [DONE] sent: complete
    assert started <= set(records)  # a stream that began has a record: nothing is missing
    assert mid_way and mid_way <= started - done
    assert all(not records[rid]["complete"] for rid in mid_way)  # a stream killed mid-way: visible, incomplete
    assert report.ok, [p.describe() for p in report.problems]


def _start_gateway(db_url: str, data_dir, worker_port: int):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", GATEWAY_SCRIPT, db_url, str(data_dir), str(worker_port), str(port), CARDIO_KEY], cwd=ROOT
    )
    return process, f"http://127.0.0.1:{port}"


def _wait_up(process, base: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, "gateway did not start"
        time.sleep(0.1)


def test_three_gateway_processes_share_one_verifiable_log(db_url, fake_worker, tmp_path, capsys):
    from ward.cli import main as ward

    gateways = [_start_gateway(db_url, tmp_path, fake_worker) for _ in range(3)]
    try:
        for process, base in gateways:
            _wait_up(process, base)
        sent: list[str] = []
        lock = threading.Lock()

        def client(base: str, n: int) -> None:
            api = openai.OpenAI(base_url=f"{base}/v1", api_key=CARDIO_KEY, max_retries=0)
            for i in range(6):
                messages = [{"role": "user", "content": f"client {n} request {i}"}]
                if i % 2:
                    with api.chat.completions.create(model=MODEL, messages=messages, max_tokens=3, stream=True) as stream:
                        for _ in stream:
                            pass
                        rid = stream.response.headers["x-request-id"]
                else:
                    rid = api.chat.completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=3).headers["x-request-id"]
                with lock:
                    sent.append(rid)

        threads = [threading.Thread(target=client, args=(base, n)) for _, base in gateways for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for process, _ in gateways:
            process.terminate()
            process.wait(timeout=30)
    assert len(sent) == 3 * 6 * 6
    from gateway.audit.service import create_audit_engine

    engine = create_audit_engine(db_url)
    try:
        records = {r["id"]: r for r in AuditReader(engine).iter_records(RecordFilter(kind="request"), ALL, through_seq=10**12)}
    finally:
        engine.dispose()
    assert set(records) == set(sent) and all(r["complete"] and r["status"] == "ok" for r in records.values())
    key = str(tmp_path / "audit" / "checkpoint-key.pem")  # made by whichever gateway came first, shared by all
    location = ["--data-dir", str(tmp_path)] if db_url.startswith("sqlite") else ["--database-url", db_url, "--signing-key", key]
    assert ward(["audit", "verify", *location]) == 0
    assert "OK: the audit log is intact" in capsys.readouterr().out

"""Admission control: a worker's bounded queue with per-team shares (unit), the gateway's answers to a
refusal (fail over, 503 or 429 with Retry-After), and the whole path with a real worker process."""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import grpc
import httpx
import pytest
from e2e_support import GENERATE_MODEL, ProcessStack, free_port, make_keys, wait_until
from fake_worker import FakeConfig, FakeWorker, running_gateway

from worker.server.admission import Admission, AdmissionLimits, AdmissionRefused

# ---- the queue's arithmetic -----------------------------------------------------------------------


def refused(admission: Admission, team: str, weight: float = 1.0, tokens: int = 10) -> str:
    with pytest.raises(AdmissionRefused) as err:
        admission.admit(team, weight, tokens)
    assert err.value.retry_after_ms > 0
    return err.value.code


def test_a_team_alone_may_fill_the_whole_queue_and_then_the_worker_is_overloaded():
    a = Admission(AdmissionLimits(max_waiting_requests=4, max_waiting_tokens=10_000))
    tickets = [a.admit("radiology", 1.0, 10) for _ in range(4)]
    assert refused(a, "radiology") == "worker_overloaded"
    tickets[0].release()
    a.admit("radiology", 1.0, 10)  # a place came free
    assert a.refusals == {"worker_overloaded": 1, "team_share_exceeded": 0}


def test_a_flood_cannot_lock_out_a_team_that_arrives_later():
    a = Admission(AdmissionLimits(max_waiting_requests=4, max_waiting_tokens=10_000))
    for _ in range(4):
        a.admit("flood", 1.0, 10)
    quiet = a.admit("quiet", 1.0, 10)  # under its share: admitted although the flood filled the queue
    assert refused(a, "flood") == "team_share_exceeded"  # over its share while another team waits
    quiet.release()
    assert refused(a, "flood") == "worker_overloaded"  # alone again, and the queue is full


def test_shares_follow_the_weights_and_the_overflow_is_bounded():
    a = Admission(AdmissionLimits(max_waiting_requests=8, max_waiting_tokens=10**6))
    a.admit("light", 1.0, 10)
    heavy = [a.admit("heavy", 3.0, 10) for _ in range(6)]  # 3/4 of 8
    assert len(heavy) == 6 and refused(a, "heavy", 3.0) == "team_share_exceeded"
    for team in ("t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9"):
        try:
            a.admit(team, 1.0, 10)
        except AdmissionRefused as exc:
            assert exc.code == "worker_overloaded"
            break
    assert a.requests <= 2 * 8  # never past twice the bound, however many teams arrive


def test_prompt_tokens_are_bounded_too_and_corrected_after_tokenizing():
    a = Admission(AdmissionLimits(max_waiting_requests=100, max_waiting_tokens=1000))
    big = a.admit("t", 1.0, 900)  # the byte estimate
    assert refused(a, "t", tokens=200) == "worker_overloaded"
    big.set_tokens(300)  # the exact count, once tokenized
    a.admit("t", 1.0, 200)
    assert a.tokens == 500


def test_a_single_request_larger_than_the_token_bound_is_not_refused_by_an_empty_queue():
    a = Admission(AdmissionLimits(max_waiting_requests=4, max_waiting_tokens=100))
    a.admit("t", 1.0, 5000)  # bounded by the context length elsewhere, not starved here
    assert a.tokens == 5000


# ---- the gateway's answers to a refusal (fake workers) ---------------------------------------------

MODEL = "fake-chat"
USER = [{"role": "user", "content": "hello there"}]


@pytest.mark.anyio
async def test_a_refused_request_fails_over_to_another_worker_of_the_model():
    async with FakeWorker(FakeConfig(model=MODEL)) as full, FakeWorker(FakeConfig(model=MODEL)) as free:
        full.servicer.fail_generate = (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", "worker_overloaded")
        async with running_gateway({MODEL: [full, free]}) as gw:
            for _ in range(4):
                r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
                assert r.status_code == 200
            assert free.servicer.completed and len(free.servicer.completed) == 4


@pytest.mark.anyio
@pytest.mark.parametrize("code, status, error_code", [("worker_overloaded", 503, "overloaded"),
                                                      ("team_share_exceeded", 429, "team_share_exceeded")])
async def test_when_every_worker_refuses_the_client_gets_the_cause_and_when_to_retry(code, status, error_code):
    async with FakeWorker(FakeConfig(model=MODEL)) as one, FakeWorker(FakeConfig(model=MODEL)) as two:
        for w in (one, two):
            w.servicer.fail_generate = (grpc.StatusCode.RESOURCE_EXHAUSTED, "refused", code)
        async with running_gateway({MODEL: [one, two]}) as gw:
            r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
    assert r.status_code == status
    body = r.json()["error"]
    assert body["code"] == error_code and body["message"]
    assert r.headers["retry-after"] == "3"  # the worker's 2,500 ms hint, rounded up


@pytest.mark.anyio
async def test_the_gateway_sends_the_teams_policy_and_never_the_clients_choice():
    async with FakeWorker(FakeConfig(model=MODEL)) as worker:
        async with running_gateway({MODEL: [worker]}) as gw:
            r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "priority": -5})
            assert r.status_code == 200
    sent = worker.servicer.generate_requests[-1]
    assert sent.team and sent.priority == -5  # the client's priority orders only within its team
    assert sent.team_priority == 0 and sent.team_weight == 1.0  # no policy set: the defaults


@pytest.mark.anyio
async def test_a_prompt_that_cannot_fit_is_refused_before_any_worker_call():
    async with FakeWorker(FakeConfig(model=MODEL, max_model_len=64, max_prompt_bytes=1 << 20)) as worker:
        async with running_gateway({MODEL: [worker]}, settings={"max_request_bytes": 64 << 20}) as gw:
            big = "word " * 400_000  # 2 MB
            before = len(worker.servicer.tokenize_requests), len(worker.servicer.generate_requests)
            r = await gw.client.post("/v1/chat/completions",
                                     json={"model": MODEL, "messages": [{"role": "user", "content": big}]})
            ids = await gw.client.post("/v1/completions", json={"model": MODEL, "prompt": list(range(65))})
    assert (len(worker.servicer.tokenize_requests), len(worker.servicer.generate_requests)) == before
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "messages" and "bytes" in r.json()["error"]["message"]
    assert ids.status_code == 400 and ids.json()["error"]["code"] == "context_length_exceeded"


# ---- the whole path: a real worker with one seat and a queue of two --------------------------------


@pytest.fixture
def stack(tmp_path):
    procs = ProcessStack(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


@pytest.mark.slow
def test_a_full_worker_answers_503_a_team_over_its_share_429_and_another_team_still_gets_in(stack):
    metrics_port = free_port()
    worker = stack.start_worker("generate", "--max-num-seqs", "1", "--max-waiting-requests", "2",
                                "--metrics-port", str(metrics_port))
    stack.wait_ready(worker)
    gateway = stack.start_gateway({GENERATE_MODEL: [worker.address]})
    keys = make_keys(gateway.database_url, {"a": ("radiology", "user"), "b": ("cardiology", "user")})
    url = gateway.url + "/v1/chat/completions"

    def body(tokens: int) -> dict:
        return {"model": GENERATE_MODEL, "messages": [{"role": "user", "content": "Summarise the handover."}],
                "max_tokens": tokens, "ignore_eos": True, "stream": True}

    def stream(key: str, tokens: int, first_chunk: concurrent.futures.Future | None = None,
               hang_up: threading.Event | None = None) -> int:
        with httpx.Client(timeout=120) as client, client.stream(
                "POST", url, json=body(tokens), headers={"Authorization": f"Bearer {key}"}) as r:
            for line in r.iter_lines():
                if first_chunk is not None and line.startswith("data: ") and not first_chunk.done():
                    first_chunk.set_result(True)
                if hang_up is not None and hang_up.is_set():
                    break  # the client goes away: the gateway cancels the generation and frees its seat
            return r.status_code

    def queued_now() -> float:
        for line in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text.splitlines():
            if line.startswith("ward_admission_queue_requests"):
                return float(line.rsplit(" ", 1)[1])
        return -1.0

    def plain(key: str) -> httpx.Response:
        b = {**body(2), "stream": False}
        return httpx.post(url, json=b, headers={"Authorization": f"Bearer {key}"}, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        seated, hang_up = concurrent.futures.Future(), threading.Event()
        running = pool.submit(stream, keys["a"], 900, seated, hang_up)  # holds the only seat until it hangs up
        seated.result(timeout=60)
        queued = [pool.submit(stream, keys["a"], 2) for _ in range(2)]  # the queue's two places
        assert wait_until(lambda: queued_now() == 2, 60)
        overloaded = plain(keys["a"])
        assert overloaded.status_code == 503, overloaded.text
        assert overloaded.json()["error"]["code"] == "overloaded" and int(overloaded.headers["retry-after"]) >= 1
        other_team = pool.submit(stream, keys["b"], 2)  # under its share: admitted despite the full queue
        assert wait_until(lambda: queued_now() == 3, 60)
        over_share = plain(keys["a"])
        assert over_share.status_code == 429, over_share.text
        assert over_share.json()["error"]["code"] == "team_share_exceeded" and over_share.headers["retry-after"]
        assert not other_team.done()  # it waits in the queue, it was not refused
        # the engine's and the admission queue's state, on the worker's endpoint and relayed by the gateway
        names = ("ward_num_requests_running", "ward_num_requests_waiting", "ward_kv_cache_usage_perc",
                 "ward_prefix_cache_hit_rate", "ward_num_preemptions_total", "ward_num_waiting_prompt_tokens",
                 'ward_team_num_requests_waiting{model_name="smollm2-135m-instruct",team="cardiology"',
                 'ward_team_served_tokens_total{model_name="smollm2-135m-instruct",team="radiology"',
                 'ward_admission_refusals_total{model_name="smollm2-135m-instruct",reason="team_share_exceeded"',
                 "ward_worker_gc_pause_seconds_count", "ward_worker_gc_frozen_objects")
        scraped: dict[str, str] = {}

        def engine_has_seen_the_other_team() -> bool:
            # admission counts a request while it is still tokenized, before the engine holds it as waiting
            scraped["own"] = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            scraped["relayed"] = httpx.get(gateway.url + "/metrics").text
            return all(names[6] in text for text in scraped.values())

        assert wait_until(engine_has_seen_the_other_team, 30), scraped
        own = scraped["own"]
        for text, label in ((own, ""), (scraped["relayed"], f'worker="{worker.address}"')):
            for name in names:
                lines = [line for line in text.splitlines() if line.startswith(name)]
                assert lines and all(label in line for line in lines), (name, label)
        # the model, tokenizer and libraries were frozen out of the collector's scans at start-up
        [frozen] = [line for line in own.splitlines() if line.startswith("ward_worker_gc_frozen_objects ")]
        assert float(frozen.rsplit(" ", 1)[1]) > 10_000, frozen
        refusals = [line for line in own.splitlines() if line.startswith("ward_admission_refusals_total")]
        assert {float(line.rsplit(" ", 1)[1]) for line in refusals} == {1.0}  # one of each reason
        assert not running.done()  # the seat was held throughout
        hang_up.set()
        assert running.result(timeout=120) == 200
        assert other_team.result(timeout=120) == 200 and all(q.result(timeout=120) == 200 for q in queued)
        # each team's finished generations, with the worker's whole first-response time and the engine's part
        after = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        for team in ("radiology", "cardiology"):
            for name in ("ward_team_first_response_seconds_count", "ward_team_time_to_first_token_seconds_count"):
                [line] = [x for x in after.splitlines() if x.startswith(name) and f'team="{team}"' in x]
                assert float(line.rsplit(" ", 1)[1]) >= 1, line

    # refused requests are audited like any other
    from sqlalchemy import create_engine, text

    engine = create_engine(gateway.database_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT http_status, data FROM audit_entries WHERE request_id IS NOT NULL")).all()
    engine.dispose()
    assert any(status == 503 and '"overloaded"' in data for status, data in rows)
    assert any(status == 429 and '"team_share_exceeded"' in data and "radiology" in data for status, data in rows)


# ---- long prompts' tokenization: teams take turns -----------------------------------------------------


@pytest.mark.anyio
async def test_one_teams_burst_of_long_prompts_never_queues_another_team_behind_it():
    from worker.server.prepare import FairPrepareExecutor

    executor = FairPrepareExecutor(threads=1)
    order: list[str] = []

    def job(name: str) -> str:
        time.sleep(0.02)
        order.append(name)
        return name

    flood = [asyncio.ensure_future(executor.run("flood", job, f"flood-{i}")) for i in range(8)]
    await asyncio.sleep(0)  # the flood is queued first
    quiet = asyncio.ensure_future(executor.run("quiet", job, "quiet"))
    assert await quiet == "quiet"
    await asyncio.gather(*flood)
    executor.shutdown()
    assert order.index("quiet") <= 2  # served at its first turn, not after the whole flood


@pytest.mark.anyio
async def test_one_teams_burst_of_long_tokenize_calls_never_refuses_another_teams_count():
    """The gateway counts a prompt (Tokenize) before it admits the request: a flood of long prompts
    holding every tokenization place must not turn another team's one count away."""
    from types import SimpleNamespace

    from proto.ward.worker.v1 import worker_pb2 as pb
    from worker.server.servicer import WorkerServicer

    def encode_prompt(prompt):
        if "flood" in prompt:
            time.sleep(0.2)
        return prompt, [1, 2, 3]

    engine = SimpleNamespace(check_prompt_size=lambda prompt: None, encode_prompt=encode_prompt, max_model_len=64)
    servicer = WorkerServicer("m", engine=SimpleNamespace(engine=engine),
                              limits=AdmissionLimits(max_waiting_requests=4, max_waiting_tokens=1 << 30))

    class Context:
        def set_trailing_metadata(self, trailers):
            self.trailers = dict(trailers)

        async def abort(self, status, message):
            raise grpc.RpcError(self.trailers.get("ward-error-code"))

    async def count(team: str, text: str) -> int | str:
        request = pb.TokenizeRequest(model="m", prompt=pb.Prompt(text=text), team=team)
        try:
            return (await servicer.Tokenize(request, Context())).count
        except grpc.RpcError as exc:
            return exc.args[0]

    flood = [asyncio.ensure_future(count("flood", "flood " * 2000)) for _ in range(8)]
    await asyncio.sleep(0.05)  # the flood holds its places first
    try:
        assert await count("quiet", "quiet " * 2000) == 3
        answers = await asyncio.gather(*flood)
    finally:
        servicer.close()
    assert answers.count(3) == 4 and set(answers) == {3, "worker_overloaded"}  # alone, it filled the 4 places

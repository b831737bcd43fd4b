"""``ward worker --engine-process``: the engine core in a process of its own, as a real worker on the
default model (CPU). It streams what the in-process engine streams (greedy tokens, n > 1, logprobs,
a grammar compiled again in the core), refuses what it refuses with the same codes, aborts what the
client leaves, reports load; a killed core ends the worker non-zero, and the core does not outlive
a killed worker."""
from __future__ import annotations

import os
import signal
import time

import grpc
import pytest
from e2e_support import GENERATE_MODEL, ProcessStack, health

from proto.ward.worker.v1 import worker_pb2 as pb
from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc


def _request(text: str, max_tokens: int = 12, **params) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=GENERATE_MODEL,
        prompt=pb.Prompt(chat=pb.Conversation(messages=[pb.ChatMessage(role="user", content=text)],
                                              add_generation_prompt=True)),
        params=pb.SamplingParams(**{"max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, **params}),
    )


def _collect(stub, request) -> tuple[dict[int, list[int]], dict[int, str], pb.GenerateResponse]:
    tokens: dict[int, list[int]] = {}
    texts: dict[int, str] = {}
    last = None
    for msg in stub.Generate(request, timeout=120):
        for c in msg.choices:
            tokens.setdefault(c.index, []).extend(c.token_ids)
            texts[c.index] = texts.get(c.index, "") + c.text
        last = msg
    return tokens, texts, last


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return out


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    stack = ProcessStack(tmp_path_factory.mktemp("engine-process"))
    try:
        split = stack.start_worker("split", "--engine-process")
        together = stack.start_worker("together")
        stack.wait_ready(split)
        stack.wait_ready(together)
        yield stack, split, together
    finally:
        stack.close()


def test_the_core_process_streams_what_the_in_process_engine_streams(workers):
    _, split, together = workers
    requests = [_request("Describe the night shift on a cardiology ward."),
                _request("List three checks before a blood transfusion.", n=2, seed=7, temperature=0.8),
                _request("Name a vital sign.", max_tokens=6, logprobs=2)]
    with grpc.insecure_channel(split.address) as a, grpc.insecure_channel(together.address) as b:
        for req in requests:
            got, got_text, got_last = _collect(pb_grpc.WorkerStub(a), req)
            want, want_text, want_last = _collect(pb_grpc.WorkerStub(b), req)
            assert got == want and got_text == want_text
            assert got_last.usage == want_last.usage and got_last.usage.completion_tokens > 0


def test_a_grammar_is_compiled_again_in_the_core(workers):
    _, split, together = workers
    schema = '{"type": "object", "properties": {"pulse": {"type": "integer"}}, "required": ["pulse"]}'
    req = _request("Give the pulse as JSON.", max_tokens=20)
    req.params.ignore_eos = False
    req.params.structured.CopyFrom(pb.StructuredOutput(json_schema=schema))
    with grpc.insecure_channel(split.address) as a, grpc.insecure_channel(together.address) as b:
        got = _collect(pb_grpc.WorkerStub(a), req)[1]
        want = _collect(pb_grpc.WorkerStub(b), req)[1]
    assert got == want and '"pulse"' in got[0]


def test_refusals_keep_their_codes(workers):
    _, split, _ = workers
    too_long = _request("x", max_tokens=10**6)
    with grpc.insecure_channel(split.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            list(pb_grpc.WorkerStub(channel).Generate(too_long, timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "maximum context length" in err.value.details()


def test_a_stream_the_client_leaves_is_aborted_in_the_core(workers):
    _, split, _ = workers
    with grpc.insecure_channel(split.address) as channel:
        stub = pb_grpc.WorkerStub(channel)
        stream = stub.Generate(_request("Write a long handover note.", max_tokens=900), timeout=120)
        next(stream)
        assert stub.LoadStats(pb.LoadStatsRequest(), timeout=10).num_running == 1
        stream.cancel()
        deadline = time.monotonic() + 20
        while stub.LoadStats(pb.LoadStatsRequest(), timeout=10).num_running and time.monotonic() < deadline:
            time.sleep(0.1)
        stats = stub.LoadStats(pb.LoadStatsRequest(), timeout=10)
        assert stats.num_running == 0 and stats.kv_blocks_used == 0 and stats.kv_blocks_total > 0


def test_a_killed_core_ends_the_worker_non_zero(tmp_path):
    stack = ProcessStack(tmp_path)
    try:
        worker = stack.start_worker("doomed", "--engine-process")
        stack.wait_ready(worker)
        cores = _children(worker.process.pid)
        assert len(cores) >= 1, "the engine core runs in a child process"
        with grpc.insecure_channel(worker.address) as channel:
            stream = pb_grpc.WorkerStub(channel).Generate(_request("Keep talking.", max_tokens=900), timeout=120)
            next(stream)
            for pid in cores:
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(grpc.RpcError):
                for _ in stream:
                    pass
        assert worker.process.wait(timeout=30) != 0
    finally:
        stack.close()


def test_the_core_does_not_outlive_a_killed_worker(tmp_path):
    stack = ProcessStack(tmp_path)
    try:
        worker = stack.start_worker("parent", "--engine-process")
        stack.wait_ready(worker)
        assert health(worker.address).ready
        cores = _children(worker.process.pid)
        assert cores
        worker.process.kill()
        worker.process.wait(timeout=10)
        deadline = time.monotonic() + 20
        while any(os.path.exists(f"/proc/{pid}") and not _is_zombie(pid) for pid in cores):
            assert time.monotonic() < deadline, "the engine core outlived its worker"
            time.sleep(0.2)
    finally:
        stack.close()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_an_embedding_worker_refuses_the_flag():
    import subprocess
    import sys

    from e2e_support import EMBED_MODEL, ROOT, clean_env

    done = subprocess.run([sys.executable, "-m", "ward", "worker", "--model", EMBED_MODEL, "--task", "embed",
                           "--port", "0", "--engine-process"], capture_output=True, text=True, env=clean_env(),
                          timeout=120, cwd=ROOT)
    assert done.returncode == 1 and "--engine-process applies to generation models only" in done.stderr


PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; from worker.parent_watch import exit_with_parent; "
                          "exit_with_parent(); print('watching', flush=True); time.sleep(120)"],
                         stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "watching"
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_busy_core_ends_with_its_killed_worker_without_reading_its_pipe(tmp_path):
    """The core reads end-of-file on its pipe only between commands; one still loading a model (minutes
    for a large one, holding GPU memory a restarted worker needs) ends at once with its parent too."""
    import subprocess
    import sys

    from e2e_support import ROOT, clean_env

    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env=clean_env())
    try:
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{child}") and not _is_zombie(child):
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.1)
    finally:
        parent.kill()

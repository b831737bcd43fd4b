"""``ward worker`` as a real process on the default models (CPU): transport security, SIGTERM drain,
and what an engine failure does to readiness and the exit status."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap

import grpc
import pytest
from auth_tls_certs import TestPKI
from e2e_support import EMBED_MODEL, GENERATE_MODEL, ROOT, ProcessStack, clean_env, health

from proto.ward.worker.v1 import worker_pb2 as pb
from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc


def generate_request(max_tokens: int, text: str = "Describe the ward at night.") -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=GENERATE_MODEL,
        prompt=pb.Prompt(chat=pb.Conversation(messages=[pb.ChatMessage(role="user", content=text)],
                                              add_generation_prompt=True)),
        params=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0),
    )


@pytest.fixture
def stack(tmp_path):
    procs = ProcessStack(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


def test_a_worker_on_a_non_loopback_address_without_tls_refuses_to_start_unless_insecure(stack):
    refused = subprocess.run(
        [sys.executable, "-m", "ward", "worker", "--model", EMBED_MODEL, "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, env=clean_env(), timeout=120, cwd=ROOT,
    )
    assert refused.returncode == 2
    assert "refusing to serve plaintext on non-loopback address 0.0.0.0" in refused.stderr
    assert "WARD_WORKER_READY" not in refused.stdout

    insecure = stack.start_worker("insecure", "--host", "0.0.0.0", "--insecure", task="embed")
    stack.wait_ready(insecure)
    assert health(insecure.address).ready


def test_a_tls_worker_serves_only_callers_with_a_certificate_from_its_client_ca(stack, tmp_path):
    pki = TestPKI(tmp_path / "pki")
    worker = stack.start_worker("tls", "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                                "--client-ca", str(pki.ca.ca_file), task="embed")
    stack.wait_ready(worker)
    ca = pki.ca.ca_file.read_bytes()

    def credentials(client=None) -> grpc.ChannelCredentials:
        if client is None:
            return grpc.ssl_channel_credentials(root_certificates=ca)
        return grpc.ssl_channel_credentials(ca, client.key_pem(), client.cert_pem())

    assert health(worker.address, credentials(pki.gateway)).ready
    for refused in (credentials(), credentials(pki.other_gateway)):
        with pytest.raises(grpc.RpcError) as err:
            health(worker.address, refused, timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as err:  # plaintext against the TLS port
        health(worker.address, timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_sigterm_drains_in_flight_requests_to_completion_then_exits_0(stack):
    worker = stack.start_worker("drain", "--shutdown-timeout", "60")
    stack.wait_ready(worker)
    with grpc.insecure_channel(worker.address) as channel:
        stub = pb_grpc.WorkerStub(channel)
        stream = stub.Generate(generate_request(max_tokens=40), timeout=120)
        first = next(stream)
        worker.process.send_signal(signal.SIGTERM)
        rest = list(stream)
        tokens = [t for message in [first, *rest] for c in message.choices for t in c.token_ids]
        assert len(tokens) == 40
        assert rest[-1].choices[0].finish_reason == "length" and rest[-1].usage.completion_tokens == 40
    assert worker.process.wait(30) == 0
    assert "worker stopped" in worker.child.log_path.read_text()


def test_new_requests_during_the_drain_are_refused_as_unavailable(stack):
    worker = stack.start_worker("drain-refuse", "--shutdown-timeout", "60")
    stack.wait_ready(worker)
    with grpc.insecure_channel(worker.address) as channel:
        stub = pb_grpc.WorkerStub(channel)
        stream = stub.Generate(generate_request(max_tokens=60), timeout=120)
        next(stream)
        worker.process.send_signal(signal.SIGTERM)
        status = None
        for _ in range(100):  # the signal lands within a few event-loop turns
            status = stub.Health(pb.HealthRequest(), timeout=5)
            if not status.ready:
                break
        assert not status.ready and status.detail == "draining"
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(generate_request(max_tokens=2), timeout=30))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert list(stream)[-1].choices[0].finish_reason == "length"
    assert worker.process.wait(30) == 0


FAILING_LAUNCHER = textwrap.dedent(
    """
    # `ward worker` whose engine breaks after a few steps (the failure is injected here, not in Ward).
    import sys

    from worker.engine.llm_engine import LLMEngine

    real_step = LLMEngine.step
    calls = 0

    def failing_step(self):
        global calls
        calls += 1
        if calls > {steps}:
            raise RuntimeError("injected engine failure")
        return real_step(self)

    LLMEngine.step = failing_step
    from ward.cli import main

    sys.exit(main(["worker", *sys.argv[1:]]))
    """
)


def test_an_engine_failure_fails_the_stream_turns_readiness_false_and_exits_non_zero(stack, tmp_path):
    launcher = tmp_path / "failing_worker.py"
    launcher.write_text(FAILING_LAUNCHER.format(steps=5))
    worker = stack.start_worker("failing", argv=[sys.executable, str(launcher)])
    stack.wait_ready(worker)
    assert health(worker.address).ready
    with grpc.insecure_channel(worker.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            list(pb_grpc.WorkerStub(channel).Generate(generate_request(max_tokens=50), timeout=60))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "injected engine failure" in err.value.details()
    assert worker.process.wait(30) != 0
    with pytest.raises(grpc.RpcError):  # nobody answers as ready any more
        health(worker.address, timeout=2)
    assert "engine failed" in worker.child.log_path.read_text()


def test_a_worker_port_in_use_is_an_error_not_a_silent_start(stack):
    first = stack.start_worker("first", task="embed")
    stack.wait_ready(first)
    taken = subprocess.run(
        [sys.executable, "-m", "ward", "worker", "--model", EMBED_MODEL, "--port", str(first.port)],
        capture_output=True, text=True, env=clean_env(), timeout=60, cwd=ROOT,
    )
    assert taken.returncode == 2 and "WARD_WORKER_READY" not in taken.stdout
    assert f"cannot bind 127.0.0.1:{first.port}" in taken.stderr
    assert health(first.address).ready


def test_asked_to_the_worker_reports_the_prompt_count_before_any_output(stack):
    """GenerateRequest.report_prompt_tokens: the first message holds only the exact count (what
    Tokenize says for the same prompt), so a gateway can reserve quota without a Tokenize call."""
    worker = stack.start_worker("count-first")
    stack.wait_ready(worker)
    with grpc.insecure_channel(worker.address) as channel:
        stub = pb_grpc.WorkerStub(channel)
        request = generate_request(max_tokens=3)
        counted = stub.Tokenize(pb.TokenizeRequest(model=request.model, prompt=request.prompt), timeout=60).count
        request.report_prompt_tokens = True
        first, *rest = list(stub.Generate(request, timeout=120))
        assert first.prompt_tokens == counted > 0
        assert not first.choices and not first.HasField("usage")
        assert sum(len(c.token_ids) for m in rest for c in m.choices) == 3 and rest[-1].usage.prompt_tokens == counted
        plain = list(stub.Generate(generate_request(max_tokens=3), timeout=120))
        assert plain[0].choices, "without the flag the first message carries output, as before"


@pytest.mark.parametrize("flags, message", [
    (("--block-size", "3"), "block_size must be a power of two, got 3"),
    (("--max-num-seqs", "0"), "max_num_seqs must be >= 1, got 0"),
    (("--device", "gpu"), "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    (("--port", "99999"), "--port must be 0 (a free port) up to 65535, got 99999"),
    (("--port", "-1"), "--port must be 0 (a free port) up to 65535, got -1"),
    (("--metrics-port", "70000"), "--metrics-port must be 0 (off) up to 65535, got 70000"),
    (("--max-waiting-requests", "-3"), "--max-waiting-requests must be >= 1, got -3"),
])
def test_a_bad_flag_is_refused_in_one_line_before_the_model_loads(flags, message):
    """Out-of-range values stop the worker at once with exit 2 and one line (not a traceback after
    the model has loaded, nor a silent start on port 99999 % 65536)."""
    refused = subprocess.run([sys.executable, "-m", "ward", "worker", "--model", GENERATE_MODEL, *flags],
                             capture_output=True, text=True, env=clean_env(), timeout=60, cwd=ROOT)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip() == f"ward worker: {message}"
    assert "WARD_WORKER_READY" not in refused.stdout


def test_a_context_longer_than_the_models_is_refused_in_one_line(tmp_path):
    from tiny_llama import tiny_llama_dir

    model_dir = tiny_llama_dir(str(tmp_path / "tiny-"))  # a 512-token context
    refused = subprocess.run([sys.executable, "-m", "ward", "worker", "--model", model_dir, "--device", "cpu",
                              "--max-model-len", "4096"],
                             capture_output=True, text=True, env=clean_env(), timeout=120, cwd=ROOT)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "ward worker: max_model_len 4096 exceeds the model's context length 512")
    assert "Traceback" not in refused.stderr


def test_sigterm_drains_in_flight_embedding_requests_too(stack):
    """--shutdown-timeout covers an embedding worker's requests as a generation worker's: requests
    queued behind one another on the device finish (a fixed second of grace cut them)."""
    worker = stack.start_worker("drain-embed", "--shutdown-timeout", "60", task="embed")
    stack.wait_ready(worker)
    texts = [f"note {i}: " + "the patient slept well and ate breakfast " * 25 for i in range(64)]
    with grpc.insecure_channel(worker.address) as channel:
        stub = pb_grpc.WorkerStub(channel)
        embed = stub.Embed.future  # each call embeds 64 texts of ~250 tokens; they run one at a time
        calls = [embed(pb.EmbedRequest(model=EMBED_MODEL, texts=texts), timeout=120) for _ in range(6)]
        calls[0].result()  # the first is done: the others are queued or running
        worker.process.send_signal(signal.SIGTERM)
        answers = [call.result() for call in calls]
    assert [len(a.data) for a in answers] == [64] * 6
    assert worker.process.wait(60) == 0


def test_a_metrics_port_in_use_is_an_error_in_one_line_before_serving():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = subprocess.run(
            [sys.executable, "-m", "ward", "worker", "--model", EMBED_MODEL, "--port", "0", "--metrics-port", str(port)],
            capture_output=True, text=True, env=clean_env(), timeout=120, cwd=ROOT,
        )
    assert taken.returncode == 2 and "WARD_WORKER_READY" not in taken.stdout
    assert f"ward worker: cannot bind the metrics port 127.0.0.1:{port}: Address already in use" in taken.stderr
    assert "Traceback" not in taken.stderr


def test_unusable_tls_files_are_refused_by_name_before_the_model_loads(tmp_path):
    pki = TestPKI(tmp_path / "pki")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    missing = tmp_path / "missing.key"
    for flags, message in (
        (["--tls-cert", str(pki.server.cert), "--tls-key", str(missing)],
         f"cannot use --tls-cert {pki.server.cert} with --tls-key {missing}"),
        (["--tls-cert", str(junk), "--tls-key", str(junk)], f"cannot use --tls-cert {junk} with --tls-key {junk}"),
        (["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key), "--client-ca", str(junk)],
         f"cannot use --client-ca {junk}"),
        (["--tls-cert", str(pki.server.cert)], "--tls-cert and --tls-key go together"),
    ):
        refused = subprocess.run([sys.executable, "-m", "ward", "worker", "--model", GENERATE_MODEL, *flags],
                                 capture_output=True, text=True, env=clean_env(), timeout=60, cwd=ROOT)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().splitlines()[-1].startswith(f"ward worker: {message}"), refused.stderr
        assert "Traceback" not in refused.stderr and "WARD_WORKER_READY" not in refused.stdout

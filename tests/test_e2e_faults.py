"""Faults through the real gateway: a worker killed mid-stream, then no worker left at all."""
from __future__ import annotations

import signal
import time

import httpx
import openai
import pytest
from e2e_support import GENERATE_MODEL, ProcessStack, load_stats, make_keys, wait_until

NOTE = [{"role": "user", "content": "List the observations taken on a night shift."}]


@pytest.fixture
def stack(tmp_path):
    procs = ProcessStack(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


def test_sigkill_mid_stream_errors_within_5s_then_the_healthy_worker_serves_and_none_left_is_503(stack):
    first, second = stack.workers_ready(("generate-a", "generate"), ("generate-b", "generate"))
    gateway = stack.start_gateway({GENERATE_MODEL: [first.address, second.address]})
    key = make_keys(gateway.database_url, {"user": ("radiology", "user")})["user"]
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=60) as client:
        stream = client.chat.completions.create(model=GENERATE_MODEL, messages=NOTE, max_tokens=500, stream=True,
                                                extra_body={"ignore_eos": True})
        received = [next(stream) for _ in range(4)]
        assert received[-1].choices[0].delta.content is not None
        serving, other = (first, second) if load_stats(first.address).num_running else (second, first)
        assert load_stats(serving.address).num_running == 1
        serving.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(openai.APIError) as err:
            for _ in stream:
                pass
        assert time.monotonic() - killed < 5
        assert "lost" in err.value.message.lower()

        after = client.chat.completions.create(model=GENERATE_MODEL, messages=NOTE, max_tokens=3,
                                               extra_body={"ignore_eos": True})
        assert after.choices[0].finish_reason == "length" and after.usage.completion_tokens == 3
        assert other.process.poll() is None and load_stats(other.address).num_running == 0

        other.process.send_signal(signal.SIGKILL)
        assert wait_until(lambda: httpx.get(f"{gateway.url}/readyz").status_code == 503, 5)
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model=GENERATE_MODEL, messages=NOTE, max_tokens=3)
    assert err.value.status_code == 503 and err.value.code == "no_ready_worker"
    assert err.value.response.headers["retry-after"]
    assert err.value.body["type"] and err.value.body["message"]

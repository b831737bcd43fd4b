"""`ward batch` and `ward model path` as a user runs them: real processes, the default model."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def ward(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ward", *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_model_path_prints_the_converted_directory(default_model_dir):
    out = ward("model", "path", "smollm2-135m-instruct")
    assert out.returncode == 0, out.stderr
    path = out.stdout.strip()
    assert path == default_model_dir and os.path.isfile(os.path.join(path, "config.json"))
    bad = ward("model", "path", "no-such-model")
    assert bad.returncode == 1 and "neither a model directory nor a known model name" in bad.stderr


LINES = [
    {"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}],
              "max_tokens": 12, "temperature": 0}},
    {"custom_id": "cmpl-1", "method": "POST", "url": "/v1/completions",
     "body": {"model": "m", "prompt": "1, 2, 3,", "max_tokens": 6, "temperature": 0, "logprobs": 2}},
    {"custom_id": "json-1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "m", "messages": [{"role": "user", "content": "Is water wet?"}], "max_tokens": 12,
              "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"enum": ["yes", "no"]}}}}},
    {"custom_id": "bad-1", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": "x", "top_p": 7}},
    {"custom_id": "bad-url", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}},
]


def read(path) -> dict[str, dict]:
    with open(path) as f:
        return {d["custom_id"]: d for d in map(json.loads, f)}


def test_batch_writes_openai_batch_output_and_resumes(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in LINES))
    run = ward("batch", str(src), str(dst), "--device", "cpu", "--no-progress")
    assert run.returncode == 0, run.stderr
    out = read(dst)
    assert set(out) == {"chat-1", "cmpl-1", "json-1", "bad-1", "bad-url"}
    answer = out["json-1"]["response"]["body"]["choices"][0]
    assert json.loads(answer["message"]["content"]) in ("yes", "no") and answer["finish_reason"] == "stop"
    chat = out["chat-1"]
    assert chat["id"].startswith("batch_req_") and chat["error"] is None
    body = chat["response"]["body"]
    assert chat["response"]["status_code"] == 200 and body["object"] == "chat.completion"
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    cmpl = out["cmpl-1"]["response"]["body"]
    assert cmpl["object"] == "text_completion" and cmpl["usage"]["completion_tokens"] == 6
    assert len(cmpl["choices"][0]["logprobs"]["tokens"]) == 6
    for bad in ("bad-1", "bad-url"):
        assert out[bad]["response"]["status_code"] == 400
        assert set(out[bad]["response"]["body"]["error"]) == {"message", "type", "param", "code"}

    # An interrupted run: the last line torn in half, one line missing. The rerun keeps what was
    # done, cuts the torn line and answers only what is missing.
    kept = [json.dumps(out["chat-1"]), json.dumps(out["bad-1"])]
    dst.write_text(kept[0] + "\n" + kept[1] + "\n" + json.dumps(out["bad-url"])[:40])
    again = ward("batch", str(src), str(dst), "--device", "cpu", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "2 already done" in again.stderr
    resumed = read(dst)
    assert set(resumed) == {"chat-1", "cmpl-1", "json-1", "bad-1", "bad-url"}
    assert resumed["chat-1"]["id"] == out["chat-1"]["id"]  # not redone
    assert len(dst.read_text().splitlines()) == 5


def test_batch_refuses_a_malformed_input_file(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"custom_id": "a"}\n{"custom_id": "a"}\n')
    run = ward("batch", str(src), str(tmp_path / "out.jsonl"), "--device", "cpu")
    assert run.returncode != 0 and "duplicate custom_id" in run.stderr


def test_batch_refuses_a_missing_input_an_unwritable_output_and_a_bad_model_in_one_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(LINES[1]) + "\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    empty_model = tmp_path / "empty-model"
    empty_model.mkdir()
    for args, message in (
        ([str(tmp_path / "missing.jsonl"), str(tmp_path / "out.jsonl")], "missing.jsonl: No such file or directory"),
        ([str(src), str(tmp_path / "out.jsonl"), "--max-num-seqs", "0"], "max_num_seqs must be >= 1, got 0"),
        ([str(src), str(blocker / "out.jsonl")], "out.jsonl: Not a directory"),
        ([str(src), str(tmp_path / "out.jsonl"), "--model", str(empty_model)], "no config.json"),
    ):
        run = ward("batch", *args, "--device", "cpu", "--no-progress", timeout=120)
        assert run.returncode == 1, run.stderr
        assert "Traceback" not in run.stderr and message in run.stderr.strip().splitlines()[-1]

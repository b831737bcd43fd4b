"""`ward batch IN.jsonl OUT.jsonl`: runs an OpenAI Batch API input file through the engine.

Every line of IN is {"custom_id", "method": "POST", "url": "/v1/chat/completions" or
"/v1/completions", "body": {...}}; every line of OUT is OpenAI's batch output object. Lines are
written as their requests finish, so an interrupted run resumes where it stopped: custom_ids
already in OUT are skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import uuid

from worker.openai_batch import CHAT_URL, COMPLETIONS_URL, params_from_body, prompt_from_body, response_body


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="OpenAI Batch API input (JSONL)")
    p.add_argument("output", help="batch output (JSONL); appended to, and skipped over on resume")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model directory or packaged model name")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--no-progress", action="store_true")


def _done_ids(path: str) -> set[str]:
    """custom_ids already answered; a torn last line (crash mid-write) is cut off."""
    done: set[str] = set()
    if not os.path.exists(path):
        return done
    good = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                done.add(json.loads(raw)["custom_id"])
                good += len(raw)
            except (ValueError, KeyError):
                break
    if good != os.path.getsize(path):
        with open(path, "r+b") as f:
            f.truncate(good)
    return done


def _read_input(path: str) -> list[dict]:
    lines, seen = [], set()
    with open(path) as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except ValueError as exc:
                raise SystemExit(f"ward batch: {path}:{n}: not JSON: {exc}")
            if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
                raise SystemExit(f"ward batch: {path}:{n}: each line needs a string custom_id")
            if item["custom_id"] in seen:
                raise SystemExit(f"ward batch: {path}:{n}: duplicate custom_id {item['custom_id']!r}")
            seen.add(item["custom_id"])
            lines.append(item)
    return lines


def _line(custom_id: str, status: int, body: dict) -> str:
    return json.dumps({
        "id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
        "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": body}, "error": None,
    }) + "\n"


def _error_body(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def run(args: argparse.Namespace) -> int:
    from worker.errors import ModelLoadError

    try:
        return _run(args)
    except OSError as exc:  # the input, the output or a model file: one line naming it
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ward batch: {where}{exc.strerror or exc}", file=sys.stderr)
    except ModelLoadError as exc:
        print(f"ward batch: {exc}", file=sys.stderr)
    return 1


def _run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from worker import LLM
    from worker.errors import ModelLoadError, WardError

    items = _read_input(args.input)
    done = _done_ids(args.output)
    todo = [it for it in items if it["custom_id"] not in done]
    print(f"ward batch: {len(items)} requests, {len(items) - len(todo)} already done", file=sys.stderr)
    if not todo:
        return 0
    pending: dict[str, tuple[str, str]] = {}  # engine id -> (custom_id, url)
    with open(args.output, "a") as out:  # opened before the model loads, so a bad path fails at once
        try:
            llm = LLM(model=args.model, device=args.device, dtype=args.dtype, max_num_seqs=args.max_num_seqs)
        except ValueError as exc:  # flags EngineConfig refuses (ModelLoadError is reported by run)
            if isinstance(exc, ModelLoadError):
                raise
            raise SystemExit(f"ward batch: {exc}") from None
        engine, model = llm.engine, llm.engine.served_model_name
        bar = tqdm(total=len(todo), desc="batch", unit="req", disable=args.no_progress)

        def write(text: str) -> None:
            out.write(text)
            out.flush()
            bar.update()

        for i, it in enumerate(todo):
            url, body = it.get("url"), it.get("body")
            if it.get("method", "POST") != "POST" or url not in (CHAT_URL, COMPLETIONS_URL) or not isinstance(body, dict):
                write(_line(it["custom_id"], 400, _error_body(
                    "each line must POST a JSON body to /v1/chat/completions or /v1/completions", "invalid_request")))
                continue
            if body.get("stream"):
                write(_line(it["custom_id"], 400, _error_body("streaming is not available in a batch", "invalid_request")))
                continue
            rid = f"batch-{i}"
            try:
                engine.add_request(rid, prompt_from_body(url, body), params_from_body(url, body))
            except WardError as exc:
                write(_line(it["custom_id"], 400, _error_body(str(exc), exc.code)))
                continue
            pending[rid] = (it["custom_id"], url)
        while engine.has_unfinished_requests():
            for res in engine.step():
                if res.finished and res.request_id in pending:
                    custom_id, url = pending.pop(res.request_id)
                    write(_line(custom_id, 200, response_body(url, model, res)))
        os.fsync(out.fileno())
    bar.close()
    return 0

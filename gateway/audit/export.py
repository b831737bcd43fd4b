"""Records as JSON Lines or CSV, streamed (an export never holds the whole log in memory)."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from gateway.audit.canonical import canonical_json

FORMATS = ("jsonl", "csv")

# One CSV row per record; nested values (principal, params, prompt, ...) as canonical JSON text.
CSV_COLUMNS = (
    "id", "kind", "complete", "status", "http_status", "team", "subject", "model", "endpoint", "worker",
    "client_address", "received_at", "first_token_at", "finished_at", "occurred_at", "prompt_tokens",
    "completion_tokens", "finish_reason", "capture_level", "principal", "params", "prompt", "prompt_sha256",
    "response", "response_sha256", "error", "data", "entries",
)  # fmt: skip

MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


def jsonl_lines(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    for record in records:
        yield json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"


# A text cell starting with one of these is a formula to spreadsheet programs (CSV injection):
# such cells get a leading apostrophe, as OWASP advises. JSONL exports are never altered.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA_START) else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return canonical_json(value)


def csv_lines(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    yield _take(buffer)
    for record in records:
        writer.writerow([_cell(record.get(column)) for column in CSV_COLUMNS])
        yield _take(buffer)


def _take(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


def export_lines(records: Iterable[dict[str, Any]], fmt: str) -> Iterator[str]:
    """The text of an export in fmt ("jsonl" or "csv"), chunk by chunk."""
    if fmt == "jsonl":
        return jsonl_lines(records)
    if fmt == "csv":
        return csv_lines(records)
    raise ValueError(f"unknown export format {fmt!r} (jsonl or csv)")

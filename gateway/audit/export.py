"""Records as JSON Lines or CSV, streamed (an export never holds the whole log in memory).

A signed JSON Lines export ends with one more line, ``{"object": "audit.export.signature",
"through_seq", "records", "selection", "sha256", "time", "key_id", "signature"}``: the audit signing
key's Ed25519 signature over the SHA-256 of every line before it, the number of records, the log
position the export was fixed to and the selection (the filter and the exporter's scope), so a
filtered export cannot pass for a complete one. ``check_signed_export`` (``ward audit verify-export``)
checks it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from gateway.audit.canonical import canonical_json, parse_utc_iso, utc_iso
from gateway.audit.reader import ReadScope, RecordFilter
from gateway.audit.signing import Signer, TrustedKeys

SIGNATURE_OBJECT = "audit.export.signature"

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


def export_selection(flt: RecordFilter, scope: ReadScope) -> dict[str, Any]:
    """Which records an export holds: the filter asked for and the exporter's scope (None: every
    team or kind the log holds)."""
    return {"filter": flt.to_json(),
            "teams": None if scope.teams is None else sorted(scope.teams),
            "kinds": None if scope.kinds is None else sorted(scope.kinds)}


def describe_selection(selection: dict[str, Any] | None) -> str:
    """One line for ``ward audit verify-export``: what the signed export says it holds."""
    if selection is None:
        return "selection not signed (an export made before selections were signed)"
    parts = [f"{k}={v}" for k, v in sorted(selection.get("filter", {}).items())]
    for scope in ("teams", "kinds"):
        if selection.get(scope) is not None:
            parts.append(f"{scope} in scope: {', '.join(selection[scope]) or 'none'}")
    return "selected: " + ("; ".join(parts) if parts else "every record")


def signed_jsonl(records: Iterable[dict[str, Any]], signer: Signer, through_seq: int,
                 selection: dict[str, Any]) -> Iterator[str]:
    """JSON Lines of records, then the signature line over them and their selection."""
    digest = hashlib.sha256()
    count = 0
    for line in jsonl_lines(records):
        digest.update(line.encode("utf-8"))
        count += 1
        yield line
    now = datetime.now(timezone.utc)
    sha = digest.hexdigest()
    yield json.dumps({"object": SIGNATURE_OBJECT, "through_seq": through_seq, "records": count, "sha256": sha,
                      "selection": selection, "time": utc_iso(now), "key_id": signer.key_id,
                      "signature": signer.sign_export(through_seq, sha, count, now, selection)}, sort_keys=True) + "\n"


def check_signed_export(lines: Iterable[bytes], trusted: TrustedKeys) -> tuple[dict[str, Any] | None, str | None]:
    """(the signature line, None) when an export's lines are those that were signed, else (..., why not)."""
    digest = hashlib.sha256()
    count = 0
    last: bytes | None = None
    for line in lines:
        if last is not None:
            digest.update(last)
            count += 1
        last = line
    try:
        trailer = json.loads(last) if last else None
    except ValueError:
        trailer = None
    if not isinstance(trailer, dict) or trailer.get("object") != SIGNATURE_OBJECT:
        return None, "the file does not end with an export signature"
    if trailer.get("records") != count or trailer.get("sha256") != digest.hexdigest():
        return trailer, "the records differ from those that were signed"
    selection = trailer.get("selection")
    if selection is not None and not isinstance(selection, dict):
        return trailer, "the export signature is malformed"
    try:
        why = trusted.check_export(int(trailer["through_seq"]), trailer["sha256"], count, parse_utc_iso(trailer["time"]),
                                   str(trailer["key_id"]), str(trailer["signature"]), selection)
    except (KeyError, TypeError, ValueError):
        return trailer, "the export signature is malformed"
    return trailer, why

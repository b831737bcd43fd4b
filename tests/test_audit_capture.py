"""Capture levels: full, redacted (configurable patterns), metadata (hashes only)."""
from __future__ import annotations

import hashlib
import json

import pytest
from pydantic import ValidationError

from gateway.audit.capture import CaptureLevel, Redactor, capture_request, capture_response
from gateway.audit.errors import AuditInputError
from gateway.audit.settings import AuditSettings, RedactionPattern


@pytest.mark.parametrize(
    "text, expected",
    [
        ("write to jane.doe@hospital.example now", "write to [EMAIL] now"),
        ("call +1 555 123 4567 or (555) 123-4567", "call [PHONE] or [PHONE]"),
        ("MRN: 00123456 admitted", "[MRN] admitted"),
        ("patient id A-99812 seen", "[MRN] seen"),
        ("born 1961-04-23, seen 03/14/2024 and 5 March 2024", "born [DATE], seen [DATE] and [DATE]"),
        ("SSN 123-45-6789", "SSN [SSN]"),
        ("account 98765432", "account [NUMBER]"),
        ("give 2 tablets of 500 mg at 8", "give 2 tablets of 500 mg at 8"),
    ],
)
def test_default_patterns_mask_common_identifiers(text, expected):
    assert Redactor().text(text) == expected


def test_redaction_keeps_message_structure_and_masks_content_only():
    prompt = [{"role": "user", "content": [{"type": "text", "text": "email a@b.org"}]}, {"role": "assistant", "content": "ok"}]
    assert Redactor().value(prompt) == [
        {"role": "user", "content": [{"type": "text", "text": "email [EMAIL]"}]},
        {"role": "assistant", "content": "ok"},
    ]


def test_configured_patterns_replace_the_defaults():
    settings = AuditSettings(redaction_patterns=[{"name": "ward", "pattern": r"Ward \d+", "replacement": "<WARD>"}])
    redactor = Redactor(settings.redaction_patterns)
    assert redactor.text("Ward 7, a@b.org") == "<WARD>, a@b.org"


def test_invalid_pattern_is_refused_by_settings():
    with pytest.raises(ValidationError):
        RedactionPattern(name="bad", pattern="(unclosed")


def test_full_keeps_everything():
    prompt = [{"role": "user", "content": "MRN 1234567"}]
    assert capture_request(CaptureLevel.FULL, Redactor(), prompt, {"stop": ["x"]}) == {"prompt": prompt, "params": {"stop": ["x"]}}
    assert capture_response(CaptureLevel.FULL, Redactor(), "a@b.org") == {"response": "a@b.org"}


def test_metadata_keeps_hashes_and_numeric_params_only():
    prompt = [{"role": "user", "content": "secret diagnosis"}]
    captured = capture_request(CaptureLevel.METADATA, Redactor(), prompt, {"temperature": 0.2, "stream": True, "user": "jane", "stop": ["x"]})
    expected_hash = hashlib.sha256(json.dumps(prompt, separators=(",", ":"), sort_keys=True).encode()).hexdigest()
    assert captured == {"prompt": None, "prompt_sha256": expected_hash, "params": {"temperature": 0.2, "stream": True}}
    response = capture_response(CaptureLevel.METADATA, Redactor(), "the answer")
    assert response == {"response": None, "response_sha256": hashlib.sha256(b'"the answer"').hexdigest()}


def test_unknown_level_is_a_typed_error():
    with pytest.raises(AuditInputError):
        CaptureLevel.parse("everything")

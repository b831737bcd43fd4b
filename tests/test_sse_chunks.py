"""The SSE chunk encoders: the per-token fast path writes exactly what the general encoder writes."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.serving.sse import ChunkTemplate, dumps

FIELDS = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "system_fingerprint": None}


@given(text=st.text(st.characters(blacklist_categories=("Cs",))), index=st.integers(0, 127), usage_null=st.booleans())
def test_a_tokens_content_chunk_is_byte_for_byte_the_general_encoding(text, index, usage_null):
    template = ChunkTemplate(FIELDS, usage_null=usage_null)
    general = template.encode({"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None})
    assert template.encode_content(index, text) == general
    body = json.loads(general.decode().removeprefix("data: "))
    assert body["choices"][0]["delta"]["content"] == text and body["choices"][0]["index"] == index


def test_dumps_is_compact_and_keeps_utf8_as_is():
    assert dumps({"a": [1, "é\n"], "b": None}) == '{"a":[1,"é\\n"],"b":null}'

"""POST /v1/embeddings: input forms, float and base64 encodings, dimensions, task checks."""

from __future__ import annotations

import base64
import math
import struct

import grpc
import pytest
from fake_worker import FakeConfig, FakeWorker, fake_embedding, running_gateway

pytestmark = pytest.mark.anyio

EMBED = "fake-embed"
CHAT = "fake-chat"


@pytest.fixture
async def gw():
    async with (
        FakeWorker(FakeConfig(model=EMBED, task="embed", embedding_dim=8)) as embedder,
        FakeWorker(FakeConfig(model=CHAT)) as chatter,
        running_gateway({EMBED: [embedder], CHAT: [chatter]}) as harness,
    ):
        harness.embedder = embedder
        yield harness


async def embed(gw, **fields):
    return await gw.client.post("/v1/embeddings", json={"model": EMBED, **fields})


async def test_string_input_gives_one_float_embedding_with_usage(gw):
    r = await embed(gw, input="chest pain on exertion")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == EMBED
    [item] = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    assert item["embedding"] == pytest.approx(fake_embedding("chest pain on exertion", 8, 0), abs=1e-6)
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


async def test_list_of_strings_keeps_order(gw):
    body = (await embed(gw, input=["a", "b c", "d"])).json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    for d, text in zip(body["data"], ["a", "b c", "d"], strict=True):
        assert d["embedding"] == pytest.approx(fake_embedding(text, 8, 0), abs=1e-6)
    assert body["usage"]["prompt_tokens"] == 4


async def test_base64_decodes_to_the_float_values(gw):
    floats = (await embed(gw, input=["x y", "z"])).json()["data"]
    encoded = (await embed(gw, input=["x y", "z"], encoding_format="base64")).json()["data"]
    for f, e in zip(floats, encoded, strict=True):
        raw = base64.b64decode(e["embedding"])
        decoded = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        assert decoded == pytest.approx(f["embedding"], abs=1e-7)


async def test_token_inputs_and_lists_of_token_inputs(gw):
    one = await embed(gw, input=[1, 2, 3])
    assert one.status_code == 200 and len(one.json()["data"]) == 1
    assert [list(t.ids) for t in gw.embedder.servicer.embed_requests[-1].token_inputs] == [[1, 2, 3]]
    many = await embed(gw, input=[[1, 2], [3]])
    assert len(many.json()["data"]) == 2 and many.json()["usage"]["prompt_tokens"] == 3


async def test_dimensions_shorten_the_vectors_and_are_checked(gw):
    body = (await embed(gw, input="abc", dimensions=4)).json()
    vector = body["data"][0]["embedding"]
    assert len(vector) == 4 and math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-5)
    assert gw.embedder.servicer.embed_requests[-1].dimensions == 4
    too_many = await embed(gw, input="abc", dimensions=9)
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "dimensions"


@pytest.mark.parametrize("bad", ["", [], [""], [[]], [1, "a"], [-1], {"text": "x"}])
async def test_malformed_inputs_are_400(gw, bad):
    r = await embed(gw, input=bad)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "input"


async def test_chat_model_refuses_embeddings_and_embedding_model_refuses_chat(gw):
    r = await gw.client.post("/v1/embeddings", json={"model": CHAT, "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported"
    r = await gw.client.post(
        "/v1/chat/completions", json={"model": EMBED, "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported"


async def test_token_ids_beyond_the_vocabulary_are_400_naming_input_before_the_worker(gw):
    for bad in ([5, 10**6], [[5], [6, 10**6]]):
        r = await embed(gw, input=bad)
        assert r.status_code == 400, bad
        error = r.json()["error"]
        assert error["param"] == "input" and error["code"] == "invalid_value"
        assert error["message"].startswith("token ids out of range")
    assert gw.embedder.servicer.embed_requests == []


@pytest.mark.parametrize(("code", "expected"), [("context_length_exceeded", "context_length_exceeded"),
                                                ("token_ids_out_of_range", "invalid_value")])
async def test_a_workers_refusal_of_the_input_names_input(gw, code, expected):
    # what the worker alone can judge: a text's token count, ids when the gateway has no vocabulary yet
    gw.embedder.servicer.fail_embed = (grpc.StatusCode.INVALID_ARGUMENT, "input 0 is too long or out of range", code)
    r = await embed(gw, input="a b c")
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["code"], error["param"]) == (expected, "input")

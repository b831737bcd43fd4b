"""The embedding model's refusals, on a tiny random BERT built on disk: an input over the context is
context_length_exceeded (as OpenAI and vLLM call it), ids beyond the vocabulary are their own error."""
from __future__ import annotations

import pytest

from worker.errors import PromptTooLongError, TokenIdsOutOfRangeError
from worker.server.embedding import EmbeddingModel

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "chest", "pain", "on", "exertion"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> EmbeddingModel:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    (path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=8)
    BertModel(config).save_pretrained(path)
    return EmbeddingModel(str(path), device="cpu")


def test_an_input_that_fits_is_embedded(model):
    vectors, count = model.embed_batched(["chest pain"], [])
    assert len(vectors) == 1 and len(vectors[0]) == 8 and count == 4  # [CLS] chest pain [SEP]


def test_a_text_over_the_context_is_context_length_exceeded(model):
    # few enough bytes to pass the cheap size check, too many tokens once tokenized
    text = " ".join(["pain"] * 7)
    assert len(text.encode()) <= model.max_input_bytes
    with pytest.raises(PromptTooLongError, match="at most 8"):
        model.embed_batched([text], [])


def test_token_ids_beyond_the_vocabulary_are_refused_as_out_of_range(model):
    with pytest.raises(TokenIdsOutOfRangeError, match=r"token ids out of range \[0, 9\): \[9, 40\]"):
        model.embed_batched([], [[5, 9, 6, 40]])

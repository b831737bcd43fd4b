"""Embedding models: a sentence-transformers style encoder directory (transformer + pooling +
optional normalisation), run with transformers on the worker's device."""
from __future__ import annotations

import json
import os

import torch

from worker.errors import InvalidRequestError, ModelLoadError, PromptTooLongError, TokenIdsOutOfRangeError
from worker.tokenizer import BYTES_PER_TOKEN_SLACK


class EmbeddingModel:
    def __init__(self, model_dir: str, device: str = "auto", max_batch: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = model_dir
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(self.device).eval()
        except Exception as exc:
            raise ModelLoadError(f"{model_dir}: cannot load the embedding model: {exc}") from exc
        self.pooling, self.normalize_default = self._read_modules()
        cfg_path = os.path.join(model_dir, "sentence_bert_config.json")
        limit = self.model.config.max_position_embeddings
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                limit = min(limit, int(json.load(f).get("max_seq_length", limit)))
        self.max_model_len = limit
        self.dim = self.model.config.hidden_size
        self.max_batch = max_batch
        vocab = self.tokenizer.get_vocab()
        longest = max((len(t.encode("utf-8", "surrogatepass")) for t in vocab), default=1)
        # An input longer than this can never fit: refused before tokenizing. Tokenizers that drop
        # whitespace (WordPiece) could fit longer inputs made mostly of blanks; those are refused too.
        self.max_input_bytes = self.max_model_len * longest * BYTES_PER_TOKEN_SLACK

    def check_input_sizes(self, texts: list[str], token_inputs: list[list[int]]) -> None:
        """Refuses inputs that can never fit, from their bytes or lengths alone (no tokenizer)."""
        for i, text in enumerate(texts):
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > self.max_input_bytes:
                raise PromptTooLongError(
                    f"input {i} is {size} bytes long; this model embeds at most {self.max_model_len} tokens, "
                    f"which no input over {self.max_input_bytes} bytes can be")
        for i, ids in enumerate(token_inputs):
            if len(ids) > self.max_model_len:
                raise PromptTooLongError(f"input {i} has {len(ids)} tokens; this model embeds at most "
                                         f"{self.max_model_len}")

    def embed_batched(self, texts: list[str], token_inputs: list[list[int]],
                      dimensions: int = 0) -> tuple[list[list[float]], int]:
        """Tokenizes and embeds ``max_batch`` inputs at a time (never the whole request at once);
        returns the vectors and the number of tokens embedded."""
        vectors: list[list[float]] = []
        count = 0
        items = token_inputs or texts
        for start in range(0, len(items), self.max_batch):
            chunk = items[start : start + self.max_batch]
            ids = chunk if token_inputs else self.token_ids(chunk)
            count += sum(len(x) for x in ids)
            vectors.extend(self.embed(ids, None, dimensions))
        return vectors, count

    def _read_modules(self) -> tuple[str, bool]:
        pooling, normalize = "mean", False
        modules = os.path.join(self.model_dir, "modules.json")
        if os.path.exists(modules):
            with open(modules) as f:
                for m in json.load(f):
                    kind = m.get("type", "")
                    if kind.endswith("Normalize"):
                        normalize = True
                    if kind.endswith("Pooling"):
                        pcfg = os.path.join(self.model_dir, m.get("path", ""), "config.json")
                        if os.path.exists(pcfg):
                            with open(pcfg) as f2:
                                c = json.load(f2)
                            pooling = "cls" if c.get("pooling_mode_cls_token") else "mean"
        return pooling, normalize

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=True)["input_ids"]

    @torch.inference_mode()
    def embed(self, inputs: list[list[int]], normalize: bool | None = None, dimensions: int = 0) -> list[list[float]]:
        """Embeddings of tokenized inputs; a too-long input is an error, never silently cut."""
        for ids in inputs:
            if not ids:
                raise InvalidRequestError("an embedding input is empty")
            if len(ids) > self.max_model_len:
                raise PromptTooLongError(f"an input has {len(ids)} tokens; this model embeds at most {self.max_model_len}")
        if dimensions and not 0 < dimensions <= self.dim:
            raise InvalidRequestError(f"dimensions must be between 1 and {self.dim}")
        vocab = self.model.config.vocab_size
        bad = [t for ids in inputs for t in ids if not 0 <= t < vocab]
        if bad:
            raise TokenIdsOutOfRangeError(f"token ids out of range [0, {vocab}): {bad[:5]}")
        out: list[list[float]] = []
        for start in range(0, len(inputs), self.max_batch):
            chunk = inputs[start : start + self.max_batch]
            width = max(len(x) for x in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for i, x in enumerate(chunk):
                ids[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
            hidden = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                m = mask.to(self.device).unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
            if dimensions:
                pooled = pooled[:, :dimensions]
            if (self.normalize_default if normalize is None else normalize) or dimensions:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out.extend(pooled.float().cpu().tolist())
        return out

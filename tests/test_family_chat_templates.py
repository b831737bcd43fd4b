"""Chat templates go through the tokenizer's own template, as transformers applies it: Gemma 3's
folds a system message into the first user turn, Gemma 2's refuses a system role (a 400 for the
caller, with the template's own message), and the engine's prompt ids are transformers' ids."""
from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

from worker.errors import InvalidRequestError
from tests.test_model_families import one_torch_thread  # noqa: F401  (autouse)
from worker.llm import LLM
from worker.sampling_params import SamplingParams
from worker.tokenizer import WardTokenizer

# The shape of the templates Gemma 2 and Gemma 3 ship (roles, turn markers, system handling).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
WORDS = ["user", "model", "system", "you", "are", "a", "ward", "nurse", "hello", "what", "is", "the", "dose", "?", "."]


def _tokenizer(template: str) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                 unk_token="<unk>", additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    hf.chat_template = template
    return hf


CHAT = [{"role": "system", "content": "you are a ward nurse ."},
        {"role": "user", "content": "what is the dose ?"}]


def test_gemma3_template_folds_the_system_message_into_the_first_user_turn(tmp_path):
    _tokenizer(GEMMA3_TEMPLATE).save_pretrained(tmp_path)
    ward = WardTokenizer.load(str(tmp_path))
    text = ward.render_chat(CHAT)
    assert text == ("<bos><start_of_turn>user\nyou are a ward nurse .\n\nwhat is the dose ?<end_of_turn>\n"
                    "<start_of_turn>model\n")
    assert text == ward.hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)


def test_gemma2_template_refuses_a_system_role_with_its_own_message(tmp_path):
    _tokenizer(GEMMA2_TEMPLATE).save_pretrained(tmp_path)
    ward = WardTokenizer.load(str(tmp_path))
    with pytest.raises(InvalidRequestError, match="System role not supported"):
        ward.render_chat(CHAT)
    assert ward.render_chat(CHAT[1:]).startswith("<bos><start_of_turn>user\nwhat is the dose ?<end_of_turn>")


def test_a_developer_message_is_rendered_as_the_system_message(tmp_path):
    # OpenAI's developer role is its system role for these models; a template that knows no such role
    # would otherwise refuse it (Gemma 3's alternation check) or keep its default system prompt beside it.
    _tokenizer(GEMMA3_TEMPLATE).save_pretrained(tmp_path)
    ward = WardTokenizer.load(str(tmp_path))
    developer = [{**CHAT[0], "role": "developer"}, CHAT[1]]
    assert ward.render_chat(developer) == ward.render_chat(CHAT)


def test_engine_chat_prompt_ids_are_transformers_ids(tmp_path):
    torch.manual_seed(0)
    hf_tok = _tokenizer(GEMMA3_TEMPLATE)
    cfg = Gemma3TextConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=len(SPECIAL) + len(WORDS),
                           max_position_embeddings=128, sliding_window=8, eos_token_id=[1, 5])
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    hf_tok.save_pretrained(tmp_path)
    llm = LLM(model=str(tmp_path), device="cpu", dtype="float32", block_size=4, num_kv_blocks=32, max_model_len=64)
    out = llm.chat(CHAT, SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))[0]
    expected = hf_tok.apply_chat_template(CHAT, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert out.prompt_token_ids == list(expected)
    assert out.prompt_token_ids[0] == hf_tok.bos_token_id and out.prompt_token_ids.count(hf_tok.bos_token_id) == 1
    assert set(llm.engine.eos_token_ids) == {1, 5}  # <end_of_turn> ends a Gemma turn

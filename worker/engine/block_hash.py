"""Chained hashes of full KV blocks: H(parent hash, token ids). The chain's root mixes in the
request's cache salt (its team), so equal prompts of different teams never share a block."""
from __future__ import annotations

import hashlib
from array import array

BlockHash = bytes

_NO_SALT_ROOT = hashlib.blake2b(b"ward.prefix-cache.v1", digest_size=16).digest()


def salt_root(cache_salt: str | None) -> BlockHash:
    if not cache_salt:
        return _NO_SALT_ROOT
    return hashlib.blake2b(b"ward.prefix-cache.v1/salt/" + cache_salt.encode(), digest_size=16).digest()


def hash_block_tokens(parent: BlockHash, token_ids: list[int]) -> BlockHash:
    return hashlib.blake2b(parent + array("q", token_ids).tobytes(), digest_size=16).digest()

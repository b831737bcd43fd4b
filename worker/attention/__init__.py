"""Attention backends: one interface, several implementations that read K/V through block tables."""
from worker.attention.backend import AttentionBackend, AttentionImpl, AttentionMetadata, get_backend

__all__ = ["AttentionBackend", "AttentionImpl", "AttentionMetadata", "get_backend"]

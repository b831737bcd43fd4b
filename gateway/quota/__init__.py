"""Per-team quotas: exact rate limits and token budgets, in Redis or in-process."""

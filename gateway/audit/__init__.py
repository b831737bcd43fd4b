"""The tamper-evident audit log of every request and every admin change."""

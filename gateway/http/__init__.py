"""The gateway's HTTP plumbing: the per-request context, OpenAI-shaped errors and their handlers,
the body-size limit, SSE responses, and body parsing and JSON answers for the routers."""

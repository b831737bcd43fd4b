"""The gateway's HTTP plumbing: the per-request context, OpenAI-shaped errors, their handlers and the
error boundary around the app, the body-size limit, the drain gate and the draining server, SSE
responses, the OpenAPI document, and body parsing and JSON answers for the routers."""

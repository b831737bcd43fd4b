"""Serving objects: HTTP-free logic behind each OpenAI endpoint, over the worker-client protocol."""

"""Tool calling: the grammar that makes a model call the required or named function, and the
parsers that turn a model's text into OpenAI tool_calls (Hermes/Qwen, Llama 3.x JSON, Mistral)."""

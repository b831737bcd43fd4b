"""OpenAI's request bodies as pydantic models (plus Ward's engine extras), validated at the edge."""

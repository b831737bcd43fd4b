"""Grammar-constrained decoding: a request's grammar (JSON schema, any JSON object, or a Lark
grammar) is compiled once per distinct spec, each choice advances its own matcher with every
sampled token, and the sampler masks the logits to the tokens the matcher allows.

The grammar library (llguidance) is imported lazily: a worker without it serves everything else
and refuses structured requests with a clear error.
"""

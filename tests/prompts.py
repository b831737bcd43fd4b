"""Varied prompts for equivalence tests: lengths from a few tokens to a few hundred."""

LONG = (
    "The history of medicine is the story of how people have tried to understand the body and to "
    "heal it. Early physicians relied on observation, herbs and ritual; later, anatomists opened the "
    "body and described what they saw, and microscopes revealed cells, bacteria and the structures "
    "of tissue. In the nineteenth century, anaesthesia and antisepsis transformed surgery, while "
    "vaccination and sanitation reduced the toll of infectious disease. The twentieth century added "
    "antibiotics, imaging, intensive care and an explosion of pharmacology. "
)

PROMPTS = [
    "Hello",
    "The capital of France is",
    "1, 2, 3, 4, 5,",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "Translate to French: The patient has a mild fever and a sore throat.",
    "List three symptoms of dehydration:",
    "Question: What organ pumps blood through the body?\nAnswer:",
    LONG,
    LONG * 2 + "Summarise the passage above in one sentence:",
    "The quick brown fox jumps over the lazy dog. " * 12,
    "Écrivez une courte phrase sur le café et les croissants à Paris :",
    "東京は日本の首都です。大阪は",
    "SELECT name, dob FROM patients WHERE",
    "A nurse should always",
    "Write a haiku about the winter moon:",
    "import torch\nimport torch.nn as nn\n\nclass MLP(nn.Module):\n    def __init__(self",
    "Q: Is 17 a prime number?\nA:",
    "In summary, the three most important findings were",
    LONG * 3,
]

CHAT = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a careful clinical assistant."},
     {"role": "user", "content": "Name two common causes of anaemia."}],
]

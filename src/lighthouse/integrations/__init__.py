"""Integrations with other libraries; each is an optional extra and is imported on its own.

- `lighthouse.integrations.hf` (also `lighthouse.hf`): Lighthouse as an attention backend of
  Hugging Face transformers models (`attn_implementation="lighthouse"`), needs `.[hf]`.
- `lighthouse.integrations.export`: a `lighthouse train` checkpoint as a Hugging Face Llama
  folder with a byte-level tokenizer (`lighthouse export`), needs `.[hf]`.
"""

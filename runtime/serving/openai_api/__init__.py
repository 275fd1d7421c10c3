"""OpenAI-compatible endpoints in front of Triton's `generate` model (docs/openai.md)."""

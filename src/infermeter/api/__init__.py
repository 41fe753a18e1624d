"""The HTTP API: OpenAI-compatible completions, tenant usage, operator endpoints, /metrics."""

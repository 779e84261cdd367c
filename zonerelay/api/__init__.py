"""The HTTP API: submission (/send, /send-raw), queue inspection and actions, suppression
list, Prometheus metrics and its own OpenAPI description. See docs/api.md."""

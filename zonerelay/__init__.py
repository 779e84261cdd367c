"""zonerelay: an outbound SMTP relay with sending zones and a durable, streaming queue."""

__version__ = "0.1.0"

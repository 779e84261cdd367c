"""Bounce handling: classify failed attempts, tell senders (DSN) and webhooks about them."""

from zonerelay.bounces.classify import (
    CATEGORIES,
    Classification,
    Classifier,
    RulesError,
    classify,
    parse_reply,
)

__all__ = ["CATEGORIES", "Classification", "Classifier", "RulesError", "classify", "parse_reply"]

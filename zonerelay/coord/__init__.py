"""Coordination: state that must hold across worker processes and instances (limits, parking)."""

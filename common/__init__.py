"""Pieces both sides share: the wire format and the base error type."""

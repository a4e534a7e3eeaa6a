"""Pieces both sides share: the wire format, choices, the registry, errors, files and addresses."""

"""The root of both sides' error hierarchies.

Each concrete error is also a built-in (as nevergrad does), so callers may
catch either ``CbptError`` or the familiar ``ValueError``/``KeyError``.
"""

from __future__ import annotations


class CbptError(Exception):
    """Base class of every error cbp-tuning raises on purpose."""

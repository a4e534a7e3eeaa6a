"""The roots of both sides' error and warning hierarchies.

Each concrete error is also a built-in (as nevergrad does), so callers may
catch either ``CbptError`` or the familiar ``ValueError``/``KeyError``.
"""

from __future__ import annotations


class CbptError(Exception):
    """Base class of every error cbp-tuning raises on purpose."""


class CbptWarning(UserWarning):
    """Base class of every warning cbp-tuning issues: filter them all with one ``warnings`` rule."""

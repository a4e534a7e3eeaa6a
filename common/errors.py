"""The roots of both sides' error and warning hierarchies.

Each concrete error is also a built-in (as nevergrad does), so callers may
catch either ``CbptError`` or the familiar ``ValueError``/``KeyError``.
"""

from __future__ import annotations


class CbptError(Exception):
    """Base class of every error cbp-tuning raises on purpose."""


class CbptWarning(UserWarning):
    """Base class of every warning cbp-tuning issues: filter them all with one ``warnings`` rule."""


class TaskError(CbptError, ValueError):
    """A task or data file that cannot be used (missing file, field, label, ...): the input needs fixing."""


class NotSupported(CbptError, RuntimeError):
    """The other side does not offer the call (an older server, e.g. one without CountTokens)."""


class TunerWarning(CbptWarning):
    """Tuning or training went on, but not exactly as asked (e.g. losses an optimizer could not take as
    they were, or texts that could not be counted before scoring)."""

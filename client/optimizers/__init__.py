"""Gradient-free optimizers behind one ask/tell interface, looked up by name.

Importing this package registers every family; the heavy libraries (pycma,
nevergrad) load only when an optimizer is built.
"""

from cbpt.client.optimizers import cma as _cma  # noqa: F401  (registers "cma")
from cbpt.client.optimizers import nevergrad as _nevergrad  # noqa: F401  (registers "ng:<name>")
from cbpt.client.optimizers.base import (
    GenerationRecord,
    Optimizer,
    OptimizerConfig,
    candidates_digest,
    replay,
)
from cbpt.client.optimizers.registry import known_names, make_optimizer, register

__all__ = [
    "GenerationRecord",
    "Optimizer",
    "OptimizerConfig",
    "candidates_digest",
    "known_names",
    "make_optimizer",
    "register",
    "replay",
]

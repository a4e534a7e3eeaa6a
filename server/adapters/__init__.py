"""Server-side methods that turn a client's vector into soft prompts.

Importing this package registers every built-in method (none, bbt, cbp).
"""

from cbpt.server.adapters import bbt, cbp, none  # noqa: F401  (registration side effect)
from cbpt.server.adapters.base import Adapter, Placement, random_projection
from cbpt.server.adapters.registry import ADAPTER_METHODS, adapter_class, register

__all__ = ["ADAPTER_METHODS", "Adapter", "Placement", "adapter_class", "random_projection", "register"]

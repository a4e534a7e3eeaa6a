"""cbp-tuning server: the scoring engine, adapters and the gRPC service (the ``[server]`` extra)."""

from cbpt.common.version import __version__

__all__ = ["__version__"]

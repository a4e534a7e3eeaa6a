"""cbp-tuning server: the scoring engine, adapters and the gRPC service (the ``[server]`` extra)."""

__version__ = "0.1.0"

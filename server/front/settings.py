"""The front door's sections of the server's settings: ``tls``, ``auth``, ``protection`` and ``metrics``.

Each field is one setting: a ``cbpt-server serve`` flag of its own name, a ``CBPT_<SECTION>__<NAME>``
environment variable and a key under its section in the settings file (``server/settings.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from cbpt.server.errors import ConfigError
from cbpt.server.front.protection import ScoreProtection

_SECTION = ConfigDict(frozen=True, extra="forbid")


class TlsSettings(BaseModel):
    """The ``tls`` section: the server's certificate, and mTLS when a client CA is given."""

    model_config = _SECTION

    tls_cert: Path | None = Field(None, description="server certificate (PEM)")
    tls_key: Path | None = Field(None, description="server private key (PEM)")
    client_ca: Path | None = Field(None, description="CA that signs client certificates; turns on mTLS")
    insecure: bool = Field(False, description="allow plaintext, and only on a loopback host")

    @property
    def on(self) -> bool:
        return self.tls_cert is not None

    def key_pair(self) -> tuple[bytes, bytes]:
        """(private key, certificate chain) as PEM bytes, as grpc takes them."""
        assert self.tls_cert is not None and self.tls_key is not None
        return read_file(self.tls_key, "--tls-key"), read_file(self.tls_cert, "--tls-cert")

    def client_ca_bytes(self) -> bytes | None:
        return read_file(self.client_ca, "--client-ca") if self.client_ca is not None else None


class AuthSettings(BaseModel):
    """The ``auth`` section: who may call (API keys), and each tenant's default limits and budgets."""

    model_config = _SECTION

    api_keys_file: Path | None = Field(None, description="JSON file of hashed API keys (cbpt-server add-key)")
    allow_no_auth: bool = Field(
        False, description="serve without API keys (or mTLS) at all, and only on a loopback host"
    )
    requests_per_minute: int = Field(
        600, ge=1, description="default per-key rate; a key's entry may override"
    )
    max_concurrent_per_key: int = Field(4, ge=1, description="default per-key concurrency")
    evaluations_per_day: int | None = Field(
        None, ge=1, description="default per-key budget of candidates scored per UTC day"
    )
    evaluations_total: int | None = Field(
        None, ge=1, description="default per-key budget of candidates in total"
    )
    usage_file: Path | None = Field(None, description="where budget usage persists across restarts (JSON)")
    keys_reload_seconds: float = Field(
        5.0, ge=0, description="how often to check the keys file for changes (0: only on SIGHUP)"
    )

    # Per-tenant (API key or client certificate) settings: meaningless, so refused, without either.
    PER_TENANT: ClassVar[tuple[str, ...]] = (
        "requests_per_minute",
        "max_concurrent_per_key",
        "evaluations_per_day",
        "evaluations_total",
        "usage_file",
    )


class ProtectionSettings(BaseModel):
    """The ``protection`` section: rounding and noise on returned log-probs (``protection.py``)."""

    model_config = _SECTION

    score_decimals: int | None = Field(
        None, ge=0, le=7, description="round returned log-probs to this many decimals (provider protection)"
    )
    score_noise: float = Field(
        0.0, ge=0, description="std of Gaussian noise added to returned log-probs, renormalised (nats)"
    )
    score_noise_seed: int | None = Field(
        None, description="seed of that noise; unset: fresh entropy (benchmarks)"
    )

    def build(self) -> ScoreProtection:
        return ScoreProtection(self.score_decimals, self.score_noise, self.score_noise_seed)


class MetricsSettings(BaseModel):
    """The ``metrics`` section: the Prometheus endpoint (off unless a port is given)."""

    model_config = _SECTION

    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve Prometheus metrics on this port"
    )
    metrics_host: str = Field("127.0.0.1", description="interface of the metrics endpoint")


def read_file(path: Path, what: str) -> bytes:
    """Read a small local file, turning OS errors into one clear line."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None

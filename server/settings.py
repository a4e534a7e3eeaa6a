"""Server settings from flags, ``CBPT_*`` environment variables and an optional YAML/TOML file.

Precedence is flags > environment > file > defaults. The file is named by
``--config`` or ``CBPT_CONFIG`` and holds the same keys as the fields below.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cbpt.common.net import is_loopback_host, is_this_host, target_host
from cbpt.server.adapters.spec import AdapterSpec, served_specs
from cbpt.server.engine.limits import Limits
from cbpt.server.errors import ConfigError
from cbpt.server.recipe import EngineRecipe
from cbpt.server.scheduling.merging import MergeSettings

if TYPE_CHECKING:  # settings validate before the model loads: no torch at import
    from cbpt.server.engine.kv import TextStateCache

_LIMITS = Limits()
# Per-tenant (API key or client certificate) limits: meaningless, so refused, without either.
TENANT_LIMITS = (
    "requests_per_minute",
    "max_concurrent_per_key",
    "evaluations_per_day",
    "evaluations_total",
    "usage_file",
)
LIMIT_FIELDS = tuple(Limits.__dataclass_fields__)


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML (.yaml/.yml) or TOML (.toml) settings file into a flat mapping."""
    kind = path.suffix.lower()
    if kind not in {".toml", ".yaml", ".yml"}:
        raise ConfigError(f"config file {path}: expected a .yaml, .yml or .toml file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        data = _load_toml(path, text) if kind == ".toml" else (yaml.safe_load(text) or {})
    except ConfigError:
        raise
    except (ValueError, yaml.YAMLError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"config file {path}: not valid {kind[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of setting names to values")
    return data


def _load_toml(path: Path, text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise ConfigError(f"config file {path}: TOML needs Python 3.11 or newer; use YAML") from None
    return tomllib.loads(text)


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the file named by the ``config`` flag or ``CBPT_CONFIG``; lowest precedence after defaults."""

    def __init__(self, settings_cls: type[BaseSettings], init_kwargs: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._path = init_kwargs.get("config") or os.environ.get("CBPT_CONFIG") or None

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ returns the whole mapping at once

    def __call__(self) -> dict[str, Any]:
        return read_config_file(Path(self._path)) if self._path else {}


class ServerSettings(BaseSettings):
    """Everything ``cbpt-server serve`` can be told; see the README for the deployment story."""

    model_config = SettingsConfigDict(env_prefix="CBPT_", extra="forbid", validate_default=True)

    config: Path | None = Field(None, description="YAML or TOML settings file")
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    model: str = "smollm2"
    model_cache_dir: Path | None = None
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    quantize: Literal["none", "int8"] = Field("none", description="int8: dynamic int8 Linear layers (CPU)")

    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = Field(None, description="CA that signs client certificates; enables mTLS")
    insecure: bool = Field(False, description="allow plaintext, and only on a loopback host")
    api_keys_file: Path | None = None
    allow_no_auth: bool = Field(
        False, description="serve without API keys (or mTLS) at all, and only on a loopback host"
    )
    reflection: bool = False

    bbt_dimension: int = Field(500, ge=1)
    prompt_length: int = Field(10, ge=1)
    projection_seed: int = 0
    generators: list[Path] = Field(default_factory=list)
    shipped_generators: bool = Field(
        True, description="serve the package's generators trained for this model"
    )
    adapters: list[AdapterSpec] = Field(
        default_factory=list,
        description="adapter specs to serve instead of the defaults (zero-shot and BBT); settings file only",
    )

    max_candidates: int = Field(_LIMITS.max_candidates, ge=1)
    max_examples: int = Field(_LIMITS.max_examples, ge=1)
    max_choices: int = Field(_LIMITS.max_choices, ge=1)
    max_text_tokens: int = Field(_LIMITS.max_text_tokens, ge=1)
    max_text_chars: int = Field(_LIMITS.max_text_chars, ge=1)
    max_choice_tokens: int = Field(_LIMITS.max_choice_tokens, ge=1)
    max_choice_chars: int = Field(
        _LIMITS.max_choice_chars, ge=1, description="characters per choice string, checked before tokenising"
    )
    max_sequences: int = Field(_LIMITS.max_sequences, ge=1)
    max_message_bytes: int = Field(_LIMITS.max_message_bytes, ge=1024)
    max_candidate_abs: float = Field(
        _LIMITS.max_candidate_abs, gt=0, description="largest absolute value a candidate may hold"
    )

    requests_per_minute: int = Field(
        600, ge=1, description="default per-key rate; a key's entry may override"
    )
    max_concurrent_per_key: int = Field(4, ge=1, description="default per-key concurrency")
    merge_window_ms: float = Field(
        5.0, ge=0, le=1000, description="how long an idle engine waits to merge concurrent calls"
    )
    merge_max_sequences: int = Field(
        512, ge=1, description="sequences merged into one job (a merged call waits for all of them)"
    )
    max_queued_requests: int = Field(64, ge=1, description="calls waiting for the engine before refusing")
    max_concurrent_rpcs: int = Field(
        256,
        ge=1,
        description="calls the server handles at once, every key and method together (health checks "
        "included); beyond it grpc refuses a call at once with RESOURCE_EXHAUSTED",
    )
    text_cache_mb_per_key: int = Field(
        256, ge=0, description="memory for one API key's cached text states (after-text adapters)"
    )
    text_cache_mb: int = Field(1024, ge=0, description="memory for all keys' cached text states together")
    text_cache_keys: int = Field(8, ge=1, description="API keys whose text states are kept at once")
    token_cache_mb: int = Field(
        64, ge=1, description="memory for tokenised texts, choices and cues kept for reuse (all keys)"
    )
    job_state_mb: int = Field(
        256,
        ge=1,
        description="memory for the text states running jobs hold at once, all together (a window of texts each)",
    )
    score_decimals: int | None = Field(
        None, ge=0, le=7, description="round returned log-probs to this many decimals (provider protection)"
    )
    score_noise: float = Field(
        0.0, ge=0, description="std of Gaussian noise added to returned log-probs, renormalised (nats)"
    )
    score_noise_seed: int | None = Field(None, description="seed of that noise; unset: fresh entropy")
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
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve Prometheus metrics on this port"
    )
    metrics_host: str = Field("127.0.0.1", description="interface of the metrics endpoint")
    grace_seconds: float = Field(
        30.0,
        ge=0,
        description="how long in-flight calls may run on shutdown; calls still running then are stopped "
        "at their next chunk and answered UNAVAILABLE with a retry delay",
    )

    backend: Literal["in-process", "ray"] = Field(
        "in-process", description="where requests are scored: this process, or Ray Serve replicas"
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join (ray://head:10001, auto); unset: start a local Ray instance"
    )
    replicas: int = Field(1, ge=1, description="engine replicas (Ray); the minimum when autoscaling")
    max_replicas: int | None = Field(None, ge=1, description="autoscale up to this many replicas (Ray)")
    replica_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for each replica")
    replica_gpus: float = Field(0.0, ge=0, description="GPUs for each replica (1: a GPU each)")
    generators_per_replica: int = Field(
        0, ge=0, description="0: replicas load every generator at start; N: on demand, N each (LRU)"
    )
    ray_batching: Literal["scheduler", "serve-batch"] = Field(
        "scheduler", description="how a replica merges requests: the scheduler (default) or @serve.batch"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs = getattr(init_settings, "init_kwargs", {})
        return init_settings, env_settings, _ConfigFileSource(settings_cls, init_kwargs)

    def budgets_configured(self) -> bool:
        return self.evaluations_per_day is not None or self.evaluations_total is not None

    def merge_settings(self) -> MergeSettings:
        return MergeSettings(self.merge_window_ms / 1000, self.merge_max_sequences, self.max_queued_requests)

    def engine_recipe(self) -> EngineRecipe:
        """What the engine is built from, here or on every replica."""
        return EngineRecipe(
            model=self.model,
            specs=tuple(self.adapter_specs()),
            shipped_generators=self.shipped_generators,
            cache_dir=self.model_cache_dir,
            device=self.device,
            threads=self.threads,
            quantize=self.quantize,
            limits=self.limits(),
            text_cache=(self.text_cache_mb_per_key << 20, self.text_cache_keys, self.text_cache_mb << 20),
            token_cache_bytes=self.token_cache_mb << 20,
            job_state_bytes=self.job_state_mb << 20,
        )

    def adapter_specs(self) -> list[AdapterSpec]:
        """What the server serves: the given specs or the defaults, then one per generator folder."""
        return served_specs(
            self.adapters,
            bbt_dimension=self.bbt_dimension,
            prompt_length=self.prompt_length,
            projection_seed=self.projection_seed,
            generators=self.generators,
        )

    def text_state_cache(self) -> TextStateCache:
        """The engine's text-state cache with the configured bounds (imports torch)."""
        cache = self.engine_recipe().text_states()
        assert cache is not None
        return cache

    def limits(self) -> Limits:
        return Limits(**{name: getattr(self, name) for name in LIMIT_FIELDS})

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def check_serving(self) -> None:
        """Refuse unsafe or unreadable transport and authentication settings before the (slow) model
        load: plaintext only on loopback, and no authentication (neither API keys nor mTLS) only on
        loopback and only when asked for with --allow-no-auth."""
        self.check_backend()
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if self.client_ca is not None and not self.tls:
            raise ConfigError("--client-ca (mTLS) needs --tls-cert and --tls-key")
        if not self.tls:
            if not self.insecure:
                reason = "API keys would travel in plaintext; " if self.api_keys_file else ""
                raise ConfigError(
                    f"TLS is off: {reason}set --tls-cert and --tls-key, "
                    "or pass --insecure to serve plaintext on a loopback host"
                )
            if not is_loopback_host(self.host):
                raise ConfigError(
                    f"--insecure serves plaintext and is allowed only on a loopback host, not {self.host!r}; "
                    "use --tls-cert/--tls-key to listen on other interfaces"
                )
        if self.api_keys_file is None and self.client_ca is None:
            if not self.allow_no_auth:
                raise ConfigError(
                    "no --api-keys-file: the server would answer anyone who reaches it; create keys with "
                    "`cbpt-server add-key`, or pass --allow-no-auth to serve without keys on a loopback host"
                )
            if not is_loopback_host(self.host):
                raise ConfigError(
                    f"--allow-no-auth serves without API keys and is allowed only on a loopback host, not "
                    f"{self.host!r}; give --api-keys-file (or --client-ca for mTLS) to listen on other interfaces"
                )
            ignored = [
                f"--{name.replace('_', '-')}" for name in TENANT_LIMITS if name in self.model_fields_set
            ]
            if ignored:
                raise ConfigError(
                    f"{', '.join(ignored)} limit each tenant, and without --api-keys-file or --client-ca "
                    "there are none: give keys or mTLS, or drop the flags"
                )
        for flag, path in (
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--client-ca", self.client_ca),
            ("--api-keys-file", self.api_keys_file),
        ):
            if path is not None:
                read_file(path, flag)

    def check_backend(self) -> None:
        """Ray options only with the Ray backend, and the Ray backend only with Ray installed."""
        if self.backend != "ray":
            given = [
                flag
                for flag, value, default in (
                    ("--ray-address", self.ray_address, None),
                    ("--replicas", self.replicas, 1),
                    ("--max-replicas", self.max_replicas, None),
                    ("--generators-per-replica", self.generators_per_replica, 0),
                )
                if value != default
            ]
            if given:
                raise ConfigError(f"{', '.join(given)} need --backend ray")
            return
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ConfigError(f"--max-replicas {self.max_replicas} is below --replicas {self.replicas}")
        if self.ray_address is not None:
            check_ray_transport(self.ray_address)
        if importlib.util.find_spec("ray") is None:
            raise ConfigError("--backend ray needs Ray: pip install 'cbp-tuning[ray]'")


RAY_TLS_FILES = ("RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")


def check_ray_transport(address: str) -> None:
    """Requests carry the texts to the replicas: over Ray's own channels, which are plaintext unless
    Ray's TLS is on. So a cluster is joined on this machine only (loopback or one of its own
    addresses: nothing crosses a network), or with ``RAY_USE_TLS=1`` and its certificate, key and
    CA (the deployment's) readable on this node."""
    if os.environ.get("RAY_USE_TLS", "").lower() in {"1", "true"}:
        for variable in RAY_TLS_FILES:
            if not os.environ.get(variable):
                raise ConfigError(f"RAY_USE_TLS is on but {variable} is unset")
            read_file(Path(os.environ[variable]), variable)
        return
    if address == "auto":  # RAY_ADDRESS, or else the cluster a `ray start` on this machine runs
        address = os.environ.get("RAY_ADDRESS") or "localhost"
    if not is_this_host(target_host(address.removeprefix("ray://"))):
        raise ConfigError(
            f"--ray-address {address}: requests (texts included) would reach the replicas in plaintext; "
            f"join a Ray instance on this machine, or set RAY_USE_TLS=1 and {', '.join(RAY_TLS_FILES)} "
            "on every node"
        )


def read_file(path: Path, what: str) -> bytes:
    """Read a small local file, turning OS errors into one clear line."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None

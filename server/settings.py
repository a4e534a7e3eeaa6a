"""Server settings: one declaration per setting, in sections that are the runtime objects themselves.

Each setting is one field with one default and one help text. Everything else is generated from it
(``cbpt.common.cli``): the ``cbpt-server serve`` flag of its own name (flags stay flat:
``--max-queued-requests``), the environment variable ``CBPT_<SECTION>__<NAME>``
(``CBPT_SCHEDULER__MAX_QUEUED_REQUESTS``; ``CBPT_<NAME>`` for the few at the top) and the key under
its section in a YAML or TOML file named by ``--config`` or ``CBPT_CONFIG``
(``scheduler: {max_queued_requests: 64}``). Precedence is flags > environment > file > defaults.
Each runtime object takes its section whole: the engine the recipe (``engine``, ``adapters``,
``limits``, ``text_cache``), the scheduler ``scheduler``, the Ray deployment ``ray``, and so on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cbpt.common.cli import Leaf, flag, leaves, nest
from cbpt.common.config_files import YAML_OR_TOML, read_mapping
from cbpt.common.limits import Limits
from cbpt.common.net import is_loopback_host
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.deploy.settings import RaySettings
from cbpt.server.errors import ConfigError
from cbpt.server.front.settings import (
    AuthSettings,
    MetricsSettings,
    ProtectionSettings,
    TlsSettings,
    read_file,
)
from cbpt.server.logs import LoggingSettings
from cbpt.server.recipe import EngineRecipe, EngineSettings, TextCacheSettings
from cbpt.server.scheduling.merging import MergeSettings

ENV_PREFIX = "CBPT_"
NESTING = "__"


class ServerSettings(BaseSettings):
    """Everything ``cbpt-server serve`` can be told; see docs/operations.md for what each does."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTING,
        extra="forbid",
        validate_default=True,
        frozen=True,
    )

    config: Path | None = Field(None, description="YAML or TOML settings file (or CBPT_CONFIG)")
    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(50051, ge=0, le=65535, description="port (0 picks a free one)")
    reflection: bool = Field(False, description="serve gRPC server reflection")
    max_concurrent_rpcs: int = Field(
        256,
        ge=1,
        description="calls the server handles at once, every key and method together (health checks "
        "included); beyond it grpc refuses a call at once with RESOURCE_EXHAUSTED",
    )
    grace_seconds: float = Field(
        30.0,
        ge=0,
        description="how long in-flight calls may run on shutdown; calls still running then are stopped "
        "at their next chunk and answered UNAVAILABLE with a retry delay",
    )
    backend: Literal["in-process", "ray"] = Field(
        "in-process", description="where requests are scored: this process, or Ray Serve replicas"
    )

    engine: EngineSettings = Field(default_factory=EngineSettings)
    adapters: ServedAdapters = Field(default_factory=ServedAdapters)
    limits: Limits = Field(default_factory=Limits)
    text_cache: TextCacheSettings = Field(default_factory=TextCacheSettings)
    scheduler: MergeSettings = Field(default_factory=MergeSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    protection: ProtectionSettings = Field(default_factory=ProtectionSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

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
        check_environment(os.environ)
        return init_settings, env_settings, _ConfigFileSource(settings_cls, init_kwargs)

    @classmethod
    def from_flags(cls, **flags: Any) -> ServerSettings:
        """Settings as the command line gives them: by flat name (``max_candidates=8``), each put in
        its section; None means "not given", so the environment, the file or the default decides."""
        return cls(**nest(cls, flags))

    @property
    def recipe(self) -> EngineRecipe:
        """What the engine is built from, here or on every replica."""
        return EngineRecipe(
            engine=self.engine, adapters=self.adapters, limits=self.limits, text_cache=self.text_cache
        )

    def check_serving(self) -> None:
        """Refuse unsafe or unreadable transport and authentication settings before the (slow) model
        load: plaintext only on loopback, and no authentication (neither API keys nor mTLS) only on
        loopback and only when asked for with --allow-no-auth."""
        self.check_backend()
        tls, auth = self.tls, self.auth
        if (tls.tls_cert is None) != (tls.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if tls.client_ca is not None and not tls.on:
            raise ConfigError("--client-ca (mTLS) needs --tls-cert and --tls-key")
        if not tls.on:
            self._check_plaintext()
        if auth.api_keys_file is None and tls.client_ca is None:
            self._check_no_auth()
        for option, path in (
            ("--tls-cert", tls.tls_cert),
            ("--tls-key", tls.tls_key),
            ("--client-ca", tls.client_ca),
            ("--api-keys-file", auth.api_keys_file),
        ):
            if path is not None:
                read_file(path, option)

    def check_backend(self) -> None:
        """Ray settings only with the Ray backend, and the Ray backend only with Ray installed."""
        self.ray.check(self.backend)

    def _check_plaintext(self) -> None:
        if not self.tls.insecure:
            reason = "API keys would travel in plaintext; " if self.auth.api_keys_file else ""
            raise ConfigError(
                f"TLS is off: {reason}set --tls-cert and --tls-key, "
                "or pass --insecure to serve plaintext on a loopback host"
            )
        if not is_loopback_host(self.host):
            raise ConfigError(
                f"--insecure serves plaintext and is allowed only on a loopback host, not {self.host!r}; "
                "use --tls-cert/--tls-key to listen on other interfaces"
            )

    def _check_no_auth(self) -> None:
        if not self.auth.allow_no_auth:
            raise ConfigError(
                "no --api-keys-file: the server would answer anyone who reaches it; create keys with "
                "`cbpt-server add-key`, or pass --allow-no-auth to serve without keys on a loopback host"
            )
        if not is_loopback_host(self.host):
            raise ConfigError(
                f"--allow-no-auth serves without API keys and is allowed only on a loopback host, not "
                f"{self.host!r}; give --api-keys-file (or --client-ca for mTLS) to listen on other interfaces"
            )
        given = [name for name in AuthSettings.PER_TENANT if name in self.auth.model_fields_set]
        if given:
            raise ConfigError(
                f"{', '.join(flag(name) for name in given)} limit each tenant, and "
                "without --api-keys-file or --client-ca there are none: give keys or mTLS, or drop the flags"
            )


@functools.cache
def _settings() -> dict[str, Leaf]:
    return leaves(ServerSettings)


def _moved(name: str) -> Leaf | None:
    """The setting ``name`` when it lives in a section (so a flat spelling of it is from before sections)."""
    leaf = _settings().get(name.lower())
    return leaf if leaf is not None and len(leaf.path) > 1 else None


def check_environment(environment: Mapping[str, str]) -> None:
    """Refuse a flat ``CBPT_<NAME>`` for a setting that lives in a section: it would be ignored."""
    for variable in sorted(environment):
        name = variable.removeprefix(ENV_PREFIX)
        if variable.startswith(ENV_PREFIX) and (leaf := _moved(name)) is not None:
            nested = ENV_PREFIX + NESTING.join(leaf.path).upper()
            raise ConfigError(f"{variable} is now {nested} (settings are nested in sections)")


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the file named by the ``config`` flag or ``CBPT_CONFIG``; lowest precedence after defaults."""

    def __init__(self, settings_cls: type[BaseSettings], init_kwargs: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._path = init_kwargs.get("config") or os.environ.get("CBPT_CONFIG") or None

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ returns the whole mapping at once

    def __call__(self) -> dict[str, Any]:
        if not self._path:
            return {}
        path = Path(self._path)
        values = read_mapping(path, what="config file", kinds=YAML_OR_TOML, error=ConfigError)
        for key in values:
            if (leaf := _moved(str(key))) is not None:
                section = ".".join(leaf.path[:-1])
                raise ConfigError(
                    f"config file {path}: {key} belongs in its section: {section}: {{{key}: ...}}"
                )
        return values

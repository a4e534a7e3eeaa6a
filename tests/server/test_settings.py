"""Settings: flags > environment > file > defaults; sections nested in files and variables, flat flags;
YAML and TOML files; one setting is one field (its flag, variable and file key are generated)."""

from __future__ import annotations

import inspect
import json
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from cbpt.common.cli import Leaf, leaves
from cbpt.common.limits import Limits
from cbpt.common.net import is_loopback_host as is_loopback
from cbpt.server.errors import ConfigError
from cbpt.server.settings import ServerSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CBPT_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = ServerSettings()
    assert (settings.host, settings.port, settings.engine.model, settings.engine.device) == (
        "127.0.0.1",
        50051,
        "smollm2",
        "auto",
    )
    assert (
        settings.tls.insecure is False
        and settings.reflection is False
        and settings.auth.allow_no_auth is False
    )
    adapters = settings.adapters
    assert (adapters.bbt_dimension, adapters.prompt_length, adapters.projection_seed) == (500, 10, 0)
    auth = settings.auth
    assert (auth.requests_per_minute, auth.max_concurrent_per_key, settings.grace_seconds) == (600, 4, 30)
    assert settings.limits == Limits()


def test_flags_override_environment_override_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(
        "port: 1111\nhost: ::1\nlimits: {max_candidates: 8}\nadapters: {generators: [a, b]}\n"
        "logging: {log_json: true}\n"
    )
    monkeypatch.setenv("CBPT_CONFIG", str(config))
    from_file = ServerSettings()
    assert (from_file.port, from_file.host, from_file.logging.log_json) == (1111, "::1", True)
    assert from_file.adapters.generators == [Path("a"), Path("b")]
    assert from_file.limits == Limits(max_candidates=8)

    monkeypatch.setenv("CBPT_PORT", "2222")
    monkeypatch.setenv("CBPT_LIMITS__MAX_EXAMPLES", "9")
    from_env = ServerSettings()
    assert (from_env.port, from_env.host) == (2222, "::1")
    assert from_env.limits == Limits(max_candidates=8, max_examples=9)  # a section merges across sources

    from_flags = ServerSettings.from_flags(port=3333, max_candidates=7)
    assert (from_flags.port, from_flags.host) == (3333, "::1")
    assert from_flags.limits == Limits(max_candidates=7, max_examples=9)


def test_toml_file_named_by_flag(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        'reflection = true\n[engine]\nmodel = "/models/tiny"\n[limits]\nmax_message_bytes = 2048\n'
    )
    settings = ServerSettings(config=config)
    assert (settings.engine.model, settings.reflection) == ("/models/tiny", True)
    assert settings.limits.max_message_bytes == 2048


def test_bad_files_and_values_are_clear(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("prot: 1\n")
    with pytest.raises(ValidationError, match="prot"):
        ServerSettings(config=typo)
    typo.write_text("limits: {max_candidatez: 1}\n")
    with pytest.raises(ValidationError, match="max_candidatez"):
        ServerSettings(config=typo)
    with pytest.raises(ConfigError, match="not found"):
        ServerSettings(config=tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"\.yaml, \.yml or \.toml"):
        ServerSettings(config=tmp_path / "settings.ini")
    with pytest.raises(ValidationError):
        ServerSettings(port=70000)
    with pytest.raises(ValidationError):
        ServerSettings.from_flags(max_candidates=0)


def test_a_flat_key_or_variable_from_before_sections_says_where_it_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ignoring them would silently serve the defaults: each is refused, naming its new spelling."""
    config = tmp_path / "server.yaml"
    config.write_text("port: 1\nmax_candidates: 8\n")
    with pytest.raises(
        ConfigError, match=r"max_candidates belongs in its section: limits: \{max_candidates: ...\}"
    ):
        ServerSettings(config=config)
    monkeypatch.setenv("CBPT_MODEL_CACHE_DIR", "/data/models")
    with pytest.raises(ConfigError, match="CBPT_MODEL_CACHE_DIR is now CBPT_ENGINE__MODEL_CACHE_DIR"):
        ServerSettings()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.com", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_settings_file_lists_the_adapters_to_serve(tmp_path: Path) -> None:
    from cbpt.server.testing import tiny_bundle

    config = tmp_path / "server.yaml"
    config.write_text(
        "adapters:\n"
        "  shipped_generators: false\n"
        "  specs:\n"
        "    - {method: none}\n"
        "    - {method: bbt, name: bbt-cue-r50, placement: on_cue, dimension: 50, prompt_length: 4}\n"
    )
    settings = ServerSettings(config=config)
    served = settings.adapters.chosen("any fingerprint").specs
    names = [(spec.name, spec.method, spec.placement.value, spec.dimension) for spec in served]
    assert names == [(None, "none", "prefix", 500), ("bbt-cue-r50", "bbt", "on_cue", 50)]
    adapters = settings.adapters.build(tiny_bundle(0))
    assert [(a.name, a.dimension, a.placement.value) for a in adapters] == [
        ("none", 0, "prefix"),
        ("bbt-cue-r50", 50, "on_cue"),
    ]
    config.write_text("adapters: {specs: [{method: bbt, placement: sideways}]}\n")
    with pytest.raises(ValidationError, match="placement"):
        ServerSettings(config=config)


def test_the_text_state_cache_bounds_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = ServerSettings().text_cache.build()
    assert (defaults.max_bytes_per_scope, defaults.max_bytes, defaults.max_scopes) == (256 << 20, 1 << 30, 8)
    monkeypatch.setenv("CBPT_TEXT_CACHE__TEXT_CACHE_MB", "64")
    cache = ServerSettings.from_flags(text_cache_mb_per_key=16, text_cache_keys=3).text_cache.build()
    assert (cache.max_bytes_per_scope, cache.max_bytes, cache.max_scopes) == (16 << 20, 64 << 20, 3)


def test_the_job_state_bound_is_a_setting_the_engine_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """ "Tenants" (#22), finding 1: the running jobs' text states are bounded in bytes, 256 MiB by default."""
    from cbpt.server.engine import ScoringEngine
    from cbpt.server.testing import tiny_bundle

    assert ServerSettings().engine.engine_options()["max_state_bytes"] == 256 << 20
    monkeypatch.setenv("CBPT_ENGINE__JOB_STATE_MB", "32")
    monkeypatch.setenv("CBPT_ENGINE__BATCH_TOKENS", "512")
    monkeypatch.setenv("CBPT_ENGINE__PACK_ROWS", "1")
    options = ServerSettings().recipe.engine.engine_options()
    engine = ScoringEngine(tiny_bundle(0), [], **options)
    assert engine.state_budget.max_bytes == 32 << 20
    assert (engine.batching.batch_tokens, engine.batching.pack_rows) == (512, 1)


def test_the_engine_section_states_the_engines_own_defaults() -> None:
    """Every batching and memory knob an operator can set starts where the engine itself does."""
    from cbpt.server.engine import ScoringEngine
    from cbpt.server.engine.batching import Batching
    from cbpt.server.recipe import EngineSettings

    constructor = inspect.signature(ScoringEngine).parameters
    for name, value in EngineSettings().engine_options().items():
        default = constructor[name].default
        assert (Batching() if name == "batching" and default is None else default) == value, name


def test_setting_names_are_unique_across_sections() -> None:
    """Flags stay flat (``--max-queued-requests``), so a name may be used once in all the sections."""
    names = [leaf.name for leaf in leaves(ServerSettings).values()]
    assert len(names) == len(set(names)) > 60

    class Clash(BaseModel):
        limits: Limits = Limits()
        max_candidates: int = 1

    with pytest.raises(TypeError, match="'max_candidates' is declared twice"):
        leaves(Clash)


def _example(leaf: Leaf) -> Any:
    """A valid value for the setting that is not its default."""
    annotation, default = leaf.field.annotation, leaf.field.get_default(call_default_factory=True)
    options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return next(choice for choice in options if choice != default)
    kind = options[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) else annotation
    if typing.get_origin(kind) is list:
        return [{"method": "none"}] if leaf.name == "specs" else ["example"]
    if kind is bool:
        return not default
    if isinstance(kind, type) and issubclass(kind, Enum):
        return next(member.value for member in kind if member != default)
    if kind in (int, float):
        return kind((default or 0) + 1)
    return "127.0.0.2" if leaf.name.endswith("host") else "example"


def _read(settings: ServerSettings, leaf: Leaf) -> Any:
    value: Any = settings
    for part in leaf.path:
        value = getattr(value, part)
    return [spec.model_dump(exclude_defaults=True) for spec in value] if leaf.name == "specs" else value


def _same(read: Any, example: Any) -> bool:
    if isinstance(example, list) and example and isinstance(example[0], str):
        return read == [Path(item) for item in example]
    return read == example or str(read) == str(example) or getattr(read, "value", None) == example


@pytest.mark.parametrize("leaf", [leaf for leaf in leaves(ServerSettings).values() if leaf.name != "config"],
                         ids=lambda leaf: ".".join(leaf.path))  # fmt: skip
def test_adding_a_setting_is_one_field(leaf: Leaf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every setting is, with nothing declared but its field: a ``serve`` flag (all but the adapter
    specs, a list of objects), a ``CBPT_<SECTION>__<NAME>`` variable and a key under its section."""
    from typer.main import get_command

    from cbpt.server.cli import app

    example = _example(leaf)
    serve = get_command(app).commands["serve"]  # type: ignore[attr-defined]
    flags = {flag for parameter in serve.params for flag in parameter.opts}
    assert (leaf.option in flags) is (leaf.name != "specs")

    variable = "CBPT_" + "__".join(leaf.path).upper()
    encoded = example if isinstance(example, str) else json.dumps(example)
    monkeypatch.setenv(variable, encoded)
    assert _same(_read(ServerSettings(), leaf), example), variable
    monkeypatch.delenv(variable)

    config = tmp_path / "server.yaml"
    nested: Any = example
    for part in reversed(leaf.path):
        nested = {part: nested}
    config.write_text(json.dumps(nested))  # JSON is YAML
    assert _same(_read(ServerSettings(config=config), leaf), example), nested

"""Settings: flags > environment > file > defaults; YAML and TOML files; limits()."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

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
    assert (settings.host, settings.port, settings.model, settings.device) == (
        "127.0.0.1",
        50051,
        "smollm2",
        "auto",
    )
    assert settings.insecure is False and settings.reflection is False and settings.allow_no_auth is False
    assert (settings.bbt_dimension, settings.prompt_length, settings.projection_seed) == (500, 10, 0)
    assert (settings.requests_per_minute, settings.max_concurrent_per_key, settings.grace_seconds) == (
        600,
        4,
        30,
    )
    assert settings.limits() == Limits()


def test_flags_override_environment_override_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("port: 1111\nhost: ::1\nmax_candidates: 8\ngenerators: [a, b]\nlog_json: true\n")
    monkeypatch.setenv("CBPT_CONFIG", str(config))
    from_file = ServerSettings()
    assert (from_file.port, from_file.host, from_file.log_json) == (1111, "::1", True)
    assert from_file.generators == [Path("a"), Path("b")]
    assert from_file.limits() == Limits(max_candidates=8)

    monkeypatch.setenv("CBPT_PORT", "2222")
    monkeypatch.setenv("CBPT_MAX_CANDIDATES", "9")
    from_env = ServerSettings()
    assert (from_env.port, from_env.host, from_env.max_candidates) == (2222, "::1", 9)

    from_flags = ServerSettings(port=3333)
    assert (from_flags.port, from_flags.host, from_flags.max_candidates) == (3333, "::1", 9)


def test_toml_file_named_by_flag(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('model = "/models/tiny"\nreflection = true\nmax_message_bytes = 2048\n')
    settings = ServerSettings(config=config)
    assert (settings.model, settings.reflection) == ("/models/tiny", True)
    assert settings.limits().max_message_bytes == 2048


def test_bad_files_and_values_are_clear(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("prot: 1\n")
    with pytest.raises(ValidationError, match="prot"):
        ServerSettings(config=typo)
    with pytest.raises(ConfigError, match="No such file"):
        ServerSettings(config=tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"\.yaml, \.yml or \.toml"):
        ServerSettings(config=tmp_path / "settings.ini")
    with pytest.raises(ValidationError):
        ServerSettings(port=70000)
    with pytest.raises(ValidationError):
        ServerSettings(max_candidates=0)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.com", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_settings_file_lists_the_adapters_to_serve(tmp_path: Path) -> None:
    from cbpt.server.adapters import build_adapters
    from cbpt.server.testing import tiny_bundle

    config = tmp_path / "server.yaml"
    config.write_text(
        "adapters:\n"
        "  - {method: none}\n"
        "  - {method: bbt, name: bbt-cue-r50, placement: on_cue, dimension: 50, prompt_length: 4}\n"
    )
    settings = ServerSettings(config=config)
    names = [
        (spec.name, spec.method, spec.placement.value, spec.dimension) for spec in settings.adapter_specs()
    ]
    assert names == [(None, "none", "prefix", 500), ("bbt-cue-r50", "bbt", "on_cue", 50)]
    adapters = build_adapters(tiny_bundle(0), settings.adapter_specs())
    assert [(a.name, a.dimension, a.placement.value) for a in adapters] == [
        ("none", 0, "prefix"),
        ("bbt-cue-r50", 50, "on_cue"),
    ]
    config.write_text("adapters:\n  - {method: bbt, placement: sideways}\n")
    with pytest.raises(ValidationError, match="placement"):
        ServerSettings(config=config)


def test_the_text_state_cache_bounds_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = ServerSettings().text_state_cache()
    assert (defaults.max_bytes_per_scope, defaults.max_bytes, defaults.max_scopes) == (256 << 20, 1 << 30, 8)
    monkeypatch.setenv("CBPT_TEXT_CACHE_MB", "64")
    cache = ServerSettings(text_cache_mb_per_key=16, text_cache_keys=3).text_state_cache()
    assert (cache.max_bytes_per_scope, cache.max_bytes, cache.max_scopes) == (16 << 20, 64 << 20, 3)


def test_the_job_state_bound_is_a_setting_the_engine_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """ "Tenants" (#22), finding 1: the running jobs' text states are bounded in bytes, 256 MiB by default."""
    from cbpt.server.engine import ScoringEngine
    from cbpt.server.testing import tiny_bundle

    assert ServerSettings().engine_recipe().job_state_bytes == 256 << 20
    monkeypatch.setenv("CBPT_JOB_STATE_MB", "32")
    recipe = ServerSettings().engine_recipe()
    assert recipe.job_state_bytes == 32 << 20
    engine = ScoringEngine(tiny_bundle(0), [], max_state_bytes=recipe.job_state_bytes)
    assert engine.state_budget.max_bytes == 32 << 20

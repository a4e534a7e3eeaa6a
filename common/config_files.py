"""The one reader of settings files (YAML, TOML, JSON): task files on the client, the server's ``--config``.

One reader, so both sides read a file the same way on every Python: TOML through ``tomllib``
(3.11+) or ``tomli`` where it is installed (3.10), and a clear message where neither is. Every
problem is one line naming the file, raised as the caller's own error type.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


def read_mapping(path: Path, *, what: str, kinds: Sequence[str], error: type[Exception]) -> dict[str, Any]:
    """The mapping a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file holds (``kinds``: the suffixes
    this caller takes); ``what`` names the file in messages ("task file", "config file")."""
    kind = path.suffix.lower()
    if kind not in kinds:
        expected = ", ".join(kinds[:-1]) + f" or {kinds[-1]}" if len(kinds) > 1 else kinds[0]
        raise error(f"{what} {path}: expected {expected}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise error(f"cannot read {what} {path}: {reason}") from None
    try:
        data = _parse(text, kind, path, what, error)
    except (ValueError, yaml.YAMLError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        if isinstance(exc, error):
            raise
        first = " ".join(str(exc).split())
        raise error(f"{what} {path} is not valid {kind[1:].upper()}: {first}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path}: expected a mapping of settings")
    return data


def _parse(text: str, kind: str, path: Path, what: str, error: type[Exception]) -> Any:
    if kind == ".toml":
        return _toml_module(path, what, error).loads(text)
    if kind == ".json":
        return json.loads(text)
    return yaml.safe_load(text) or {}


def _toml_module(path: Path, what: str, error: type[Exception]) -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise error(f"{what} {path}: TOML needs Python 3.11+ (or tomli installed); use YAML") from None
    return tomllib


YAML_OR_TOML = (".yaml", ".yml", ".toml")
ANY_SETTINGS_FILE = (*YAML_OR_TOML, ".json")

"""API keys: stored only as sha256 hashes, looked up in constant time.

Keys are 256-bit random strings, so a plain sha256 is enough to store them (no password
stretching needed), and lookup compares against every entry with ``hmac.compare_digest`` so
timing reveals nothing about which one matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cbpt.common.files import write_atomic
from cbpt.server.errors import KeyFileError

KEY_PREFIX = "cbpt_"
KEY_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True)
class ApiKey:
    """One stored key: its id (what logs show), its hash, and its own limits (None: server default)."""

    id: str
    sha256: str
    requests_per_minute: int | None = None
    max_concurrent: int | None = None


def generate_key() -> str:
    """A new high-entropy API key (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_keys(path: Path) -> list[ApiKey]:
    """Parse ``{"keys": [{"id", "sha256", "requests_per_minute"?, "max_concurrent"?}]}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(f"API keys file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"API keys file {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeyFileError(f'API keys file {path}: expected {{"keys": [...]}}')
    keys: list[ApiKey] = []
    for i, entry in enumerate(entries):
        try:
            key = ApiKey(
                id=str(entry["id"]),
                sha256=str(entry["sha256"]).lower(),
                requests_per_minute=_optional_positive(entry.get("requests_per_minute")),
                max_concurrent=_optional_positive(entry.get("max_concurrent")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyFileError(f"API keys file {path}: keys[{i}] is malformed ({exc})") from None
        if not KEY_ID.fullmatch(key.id) or not re.fullmatch(r"[0-9a-f]{64}", key.sha256):
            raise KeyFileError(
                f"API keys file {path}: keys[{i}] needs an id like 'alice' and a sha256 hex digest"
            )
        keys.append(key)
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise KeyFileError(f"API keys file {path}: duplicate key id")
    return keys


def _optional_positive(value: object) -> int | None:
    if value is None:
        return None
    number = int(value)  # type: ignore[call-overload]
    if number < 1:
        raise ValueError("limits must be at least 1")
    return number


def add_key(
    path: Path, key_id: str, requests_per_minute: int | None = None, max_concurrent: int | None = None
) -> str:
    """Add a key to ``path`` (created 0600 if absent); return its plaintext, the only time it exists."""
    if not KEY_ID.fullmatch(key_id):
        raise KeyFileError(f"key id {key_id!r}: use 1-64 letters, digits, '.', '_' or '-'")
    keys = load_keys(path) if path.exists() else []
    if any(k.id == key_id for k in keys):
        raise KeyFileError(f"API keys file {path}: key id {key_id!r} already exists")
    plaintext = generate_key()
    keys.append(ApiKey(key_id, hash_key(plaintext), requests_per_minute, max_concurrent))
    entries = [{k: v for k, v in vars(key).items() if v is not None} for key in keys]
    write_atomic(path, json.dumps({"keys": entries}, indent=2) + "\n", mode=0o600)
    return plaintext


class KeyStore:
    """Constant-time lookup of a presented key among the stored hashes."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = tuple(keys)

    @classmethod
    def from_file(cls, path: Path) -> KeyStore:
        return cls(load_keys(path))

    def lookup(self, presented: str) -> ApiKey | None:
        digest = hash_key(presented).encode("ascii")
        found: ApiKey | None = None
        for key in self._keys:  # no early exit: every entry is compared
            if hmac.compare_digest(digest, key.sha256.encode("ascii")):
                found = key
        return found

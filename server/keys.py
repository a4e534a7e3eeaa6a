"""API keys: stored only as sha256 hashes, looked up in constant time, reloadable, with expiry.

Keys are 256-bit random strings, so a plain sha256 is enough to store them (no password
stretching needed), and lookup compares against every entry with ``hmac.compare_digest`` so
timing reveals nothing about which one matched. A key may carry its own limits, a budget of
candidate evaluations (per UTC day and in total) and an expiry time. ``KeyStore.reload`` re-reads
the file (on SIGHUP or when it changes) without a restart; a file that no longer parses leaves
the keys in force as they were.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cbpt.common.files import write_atomic
from cbpt.server.errors import KeyFileError

log = logging.getLogger(__name__)

KEY_PREFIX = "cbpt_"
KEY_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True)
class ApiKey:
    """One stored key: its id (what logs show), its hash, and its own limits (None: server default)."""

    id: str
    sha256: str
    requests_per_minute: int | None = None
    max_concurrent: int | None = None
    evaluations_per_day: int | None = None  # candidates scored per UTC day
    evaluations_total: int | None = None  # candidates scored over the key's life
    expires: datetime | None = None  # UTC; refused from then on

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and (now or datetime.now(timezone.utc)) >= self.expires

    def to_json(self) -> dict[str, object]:
        entry = {k: v for k, v in vars(self).items() if v is not None and k != "expires"}
        if self.expires is not None:
            entry["expires"] = self.expires.isoformat().replace("+00:00", "Z")
        return entry


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
                evaluations_per_day=_optional_positive(entry.get("evaluations_per_day")),
                evaluations_total=_optional_positive(entry.get("evaluations_total")),
                expires=parse_expiry(entry.get("expires")),
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


def parse_expiry(value: object) -> datetime | None:
    """An ISO 8601 date or time (``2027-01-31``, ``2027-01-31T12:00:00Z``), read as UTC without a zone."""
    if value is None:
        return None
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _optional_positive(value: object) -> int | None:
    if value is None:
        return None
    number = int(value)  # type: ignore[call-overload]
    if number < 1:
        raise ValueError("limits must be at least 1")
    return number


def add_key(
    path: Path,
    key_id: str,
    requests_per_minute: int | None = None,
    max_concurrent: int | None = None,
    *,
    evaluations_per_day: int | None = None,
    evaluations_total: int | None = None,
    expires: datetime | None = None,
) -> str:
    """Add a key to ``path`` (created 0600 if absent); return its plaintext, the only time it exists."""
    if not KEY_ID.fullmatch(key_id):
        raise KeyFileError(f"key id {key_id!r}: use 1-64 letters, digits, '.', '_' or '-'")
    keys = load_keys(path) if path.exists() else []
    if any(k.id == key_id for k in keys):
        raise KeyFileError(f"API keys file {path}: key id {key_id!r} already exists")
    plaintext = generate_key()
    limits = (requests_per_minute, max_concurrent, evaluations_per_day, evaluations_total)
    keys.append(ApiKey(key_id, hash_key(plaintext), *limits, expires=expires))
    write_atomic(path, json.dumps({"keys": [key.to_json() for key in keys]}, indent=2) + "\n", mode=0o600)
    return plaintext


class KeyStore:
    """Constant-time lookup of a presented key among the stored hashes; ``reload`` swaps them whole."""

    def __init__(self, keys: list[ApiKey], path: Path | None = None) -> None:
        self._keys = tuple(keys)
        self._by_id = {key.id: key for key in keys}
        self.path = path
        self._stamp = _stamp(path)
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path) -> KeyStore:
        return cls(load_keys(path), path)

    def lookup(self, presented: str) -> ApiKey | None:
        digest = hash_key(presented).encode("ascii")
        found: ApiKey | None = None
        for key in self._keys:  # no early exit: every entry is compared
            if hmac.compare_digest(digest, key.sha256.encode("ascii")):
                found = key
        return found

    def get(self, key_id: str) -> ApiKey | None:
        """The key in force with this id (its limits and budget as the file now says)."""
        return self._by_id.get(key_id)

    def __len__(self) -> int:
        return len(self._keys)

    def changed(self) -> bool:
        """Whether the file's modification time or size moved since the last (re)load."""
        return self.path is not None and _stamp(self.path) != self._stamp

    def reload(self) -> bool:
        """Re-read the file; on any problem keep the keys in force and log why. True when reloaded."""
        if self.path is None:
            return False
        with self._lock:
            stamp = _stamp(self.path)
            try:
                keys = load_keys(self.path)
            except KeyFileError as error:
                self._stamp = stamp  # do not retry the same broken file on every poll
                log.warning(
                    "API keys file not reloaded; the keys in force stay",
                    extra={"error_type": type(error).__name__},
                )
                return False
            self._keys = tuple(keys)
            self._by_id = {key.id: key for key in keys}
            self._stamp = stamp
        log.info("API keys reloaded", extra={"num_keys": len(keys)})
        return True


def _stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size

"""API keys and client-certificate identities: hashed, looked up in constant time, reloadable.

Keys are 256-bit random strings, so a plain sha256 is enough to store them (no password
stretching needed), and lookup compares against every entry with ``hmac.compare_digest`` so
timing reveals nothing about which one matched. An entry may instead (or also) name a client
certificate (``certificate``: its subject CN or a SAN): with mTLS, that certificate is the
tenant, with the entry's id, limits and budget; an entry with both needs the key *and* the
certificate. An entry may carry its own limits, a budget of evaluations (per UTC day and in
total) and an expiry time. ``KeyStore.reload`` re-reads the file (on SIGHUP or when it changes)
without a restart; a file that no longer parses refuses every call until it is fixed (a typo
made while revoking must not leave the revoked key working), see ``KeyStore.broken``.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cbpt.common.files import write_atomic
from cbpt.server.errors import KeyFileError

log = logging.getLogger(__name__)

KEY_PREFIX = "cbpt_"
_NO_HASH = "0" * 64  # compared in place of a certificate-only entry's missing hash, so timing stays flat
KEY_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
CERTIFICATE_NAME = re.compile(r"[A-Za-z0-9_.@\-]{1,128}")  # a CN or SAN that can name a tenant
CERTIFICATE_PREFIX = "cert:"  # tenants named by a certificate alone; key ids cannot hold ':'


@dataclass(frozen=True)
class ApiKey:
    """One stored key: its id (what logs show), its hash, and its own limits (None: server default)."""

    id: str
    sha256: str | None  # None: a certificate-only entry, which no bearer key opens
    requests_per_minute: int | None = None
    max_concurrent: int | None = None
    evaluations_per_day: int | None = None  # candidates scored per UTC day
    evaluations_total: int | None = None  # candidates scored over the key's life
    expires: datetime | None = None  # UTC; refused from then on
    certificate: str | None = None  # the client certificate (CN or SAN) this entry belongs to

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
            certificate = entry.get("certificate")
            sha256 = entry["sha256"] if certificate is None else entry.get("sha256")
            key = ApiKey(
                id=str(entry["id"]),
                sha256=None if sha256 is None else str(sha256).lower(),
                requests_per_minute=_optional_positive(entry.get("requests_per_minute")),
                max_concurrent=_optional_positive(entry.get("max_concurrent")),
                evaluations_per_day=_optional_positive(entry.get("evaluations_per_day")),
                evaluations_total=_optional_positive(entry.get("evaluations_total")),
                expires=parse_expiry(entry.get("expires")),
                certificate=None if certificate is None else str(certificate),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyFileError(f"API keys file {path}: keys[{i}] is malformed ({exc})") from None
        if not KEY_ID.fullmatch(key.id) or (
            key.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", key.sha256)
        ):
            raise KeyFileError(
                f"API keys file {path}: keys[{i}] needs an id like 'alice' and a sha256 hex digest "
                "(or a certificate name)"
            )
        if key.certificate is not None and not CERTIFICATE_NAME.fullmatch(key.certificate):
            raise KeyFileError(f"API keys file {path}: keys[{i}].certificate is not a certificate name")
        keys.append(key)
    for what, values in (("key id", [k.id for k in keys]), ("certificate", [k.certificate for k in keys])):
        named = [value for value in values if value is not None]
        if len(set(named)) != len(named):
            raise KeyFileError(f"API keys file {path}: duplicate {what}")
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
    certificate: str | None = None,
) -> str:
    """Add a key to ``path`` (created 0600 if absent); return its plaintext, the only time it exists.

    With ``certificate``, the key works only over mTLS with that client certificate."""
    plaintext = generate_key()
    limits = (requests_per_minute, max_concurrent, evaluations_per_day, evaluations_total)
    _add_entry(path, ApiKey(key_id, hash_key(plaintext), *limits, expires=expires, certificate=certificate))
    return plaintext


def add_certificate(
    path: Path,
    key_id: str,
    certificate: str,
    requests_per_minute: int | None = None,
    max_concurrent: int | None = None,
    *,
    evaluations_per_day: int | None = None,
    evaluations_total: int | None = None,
    expires: datetime | None = None,
) -> None:
    """Add an entry that a client certificate alone opens (mTLS): the tenant ``key_id`` and its limits."""
    limits = (requests_per_minute, max_concurrent, evaluations_per_day, evaluations_total)
    _add_entry(path, ApiKey(key_id, None, *limits, expires=expires, certificate=certificate))


def _add_entry(path: Path, entry: ApiKey) -> None:
    if not KEY_ID.fullmatch(entry.id):
        raise KeyFileError(f"key id {entry.id!r}: use 1-64 letters, digits, '.', '_' or '-'")
    if entry.certificate is not None and not CERTIFICATE_NAME.fullmatch(entry.certificate):
        raise KeyFileError(f"certificate {entry.certificate!r}: expected a CN or SAN such as alice.example")
    keys = load_keys(path) if path.exists() else []
    if any(k.id == entry.id for k in keys):
        raise KeyFileError(f"API keys file {path}: key id {entry.id!r} already exists")
    if entry.certificate is not None and any(k.certificate == entry.certificate for k in keys):
        raise KeyFileError(f"API keys file {path}: certificate {entry.certificate!r} already has an entry")
    keys.append(entry)
    write_atomic(path, json.dumps({"keys": [key.to_json() for key in keys]}, indent=2) + "\n", mode=0o600)


class KeyStore:
    """Constant-time lookup of a presented key among the stored hashes; ``reload`` swaps them whole.

    A reload that fails (the file no longer parses, or is gone) sets ``broken``: from then until a
    reload succeeds, ``lookup`` and ``by_certificate`` find nothing, so every call is refused. The
    alternative, serving on with the old keys, would keep a key working that the broken edit was
    meant to revoke; an outage the operator sees at once is the safer failure."""

    def __init__(self, keys: list[ApiKey], path: Path | None = None) -> None:
        self._keys = tuple(keys)
        self._by_id = {key.id: key for key in keys}
        self.path = path
        self._stamp = _stamp(path)
        self._lock = threading.Lock()
        self.broken: str | None = None  # why the last reload failed; None while the file is good
        self.on_reload: Callable[[bool], None] = lambda ok: None  # metrics and health hear of each

    @classmethod
    def from_file(cls, path: Path) -> KeyStore:
        return cls(load_keys(path), path)

    def lookup(self, presented: str) -> ApiKey | None:
        digest = hash_key(presented).encode("ascii")
        found: ApiKey | None = None
        for key in self._keys:  # no early exit: every entry is compared
            stored = (key.sha256 or _NO_HASH).encode("ascii")
            if hmac.compare_digest(digest, stored) and key.sha256 is not None:
                found = key
        return None if self.broken else found

    def by_certificate(self, names: Iterable[str]) -> ApiKey | None:
        """The entry naming one of a client certificate's names (CN and SANs), if any."""
        wanted = set(names)
        found = next((key for key in self._keys if key.certificate in wanted), None)
        return None if self.broken else found

    def get(self, key_id: str) -> ApiKey | None:
        """The key in force with this id (its limits and budget as the file now says)."""
        return self._by_id.get(key_id)

    def __len__(self) -> int:
        return len(self._keys)

    def changed(self) -> bool:
        """Whether the file's modification time or size moved since the last (re)load."""
        return self.path is not None and _stamp(self.path) != self._stamp

    def reload(self) -> bool:
        """Re-read the file. On any problem refuse every key until a reload succeeds, and say so at
        ERROR (the metric and health hear it through ``on_reload``). True when reloaded."""
        if self.path is None:
            return False
        with self._lock:
            stamp = _stamp(self.path)
            try:
                keys = load_keys(self.path)
            except KeyFileError as error:
                self._stamp = stamp  # do not retry the same broken file on every poll
                self.broken = str(error)
                log.error(
                    "API keys file not reloaded: every call is refused until it is fixed",
                    extra={"error_type": type(error).__name__},
                )
                self.on_reload(False)
                return False
            self._keys = tuple(keys)
            self._by_id = {key.id: key for key in keys}
            self._stamp = stamp
            self.broken = None
        log.info("API keys reloaded", extra={"num_keys": len(keys)})
        self.on_reload(True)
        return True


def _stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size

"""Sealing files with AES-256-GCM (checkpoints and, optionally, tuned vectors at rest), and
authenticating several files together with HMAC-SHA256 under the same key (tuned-task folders).

Layout of a sealed file::

    magic (8) | format_version (u16) | kdf (u8: 0 key file, 1 scrypt) | salt (16) | nonce (12)
    | ciphertext+tag

The header up to the salt is authenticated as associated data, so changing any
byte (version, kdf, salt, ciphertext) fails authentication. The key is either
32 random bytes from a key file (created 0600 on first use) or a passphrase
stretched with scrypt over the file's salt.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cbpt.client.errors import CheckpointError, KeyWarning

KEY_FILE_ENV = "CBPT_KEY_FILE"
DEFAULT_KEY_FILE = Path("~/.config/cbpt/checkpoint.key")
KEY_BYTES = 32
SALT_BYTES = 16
NONCE_BYTES = 12
KDF_KEY_FILE = 0
KDF_SCRYPT = 1
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_HEADER = struct.Struct(">8sHB16s12s")


def default_key_file() -> Path:
    return Path(os.environ.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE).expanduser()


@dataclass
class SecretKey:
    """A raw 32-byte key or a passphrase; scrypt derivations are cached per salt."""

    raw: bytes | None = None
    passphrase: str | None = None
    source: str = "key"
    _derived: dict[bytes, bytes] = field(default_factory=dict, repr=False)
    _salt: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.raw is None) == (self.passphrase is None):
            raise ValueError("a SecretKey is either raw bytes or a passphrase")
        if self.raw is not None and len(self.raw) != KEY_BYTES:
            raise CheckpointError(
                f"{self.source}: a key must be exactly {KEY_BYTES} bytes, got {len(self.raw)}"
            )
        if self.passphrase is not None and not self.passphrase:
            raise CheckpointError("an empty passphrase cannot protect a checkpoint")

    @classmethod
    def from_passphrase(cls, passphrase: str) -> SecretKey:
        return cls(passphrase=passphrase, source="passphrase")

    @classmethod
    def from_file(cls, path: Path | None = None, *, create: bool = True) -> SecretKey:
        """The key in ``path`` (default ``$CBPT_KEY_FILE`` or ~/.config/cbpt/checkpoint.key), created if
        absent."""
        path = Path(path).expanduser() if path is not None else default_key_file()
        if not path.exists():
            if not create:
                raise CheckpointError(f"key file not found: {path}")
            _create_key_file(path)
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise CheckpointError(f"cannot read key file {path}: {error.strerror}") from None
        if path.stat().st_mode & 0o077:
            warnings.warn(
                f"key file {path} is readable by other users; chmod 600 it", KeyWarning, stacklevel=2
            )
        return cls(raw=raw, source=f"key file {path}")

    @property
    def kdf(self) -> int:
        return KDF_KEY_FILE if self.raw is not None else KDF_SCRYPT

    def salt(self) -> bytes:
        """The salt this key seals with (one per key object, so scrypt runs once per run)."""
        if self._salt is None:
            self._salt = bytes(SALT_BYTES) if self.raw is not None else os.urandom(SALT_BYTES)
        return self._salt

    def derive(self, salt: bytes) -> bytes:
        if self.raw is not None:
            return self.raw
        assert self.passphrase is not None, "a key is raw bytes or a passphrase"
        if salt not in self._derived:
            scrypt = Scrypt(salt=salt, length=KEY_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
            self._derived[salt] = scrypt.derive(self.passphrase.encode("utf-8"))
        return self._derived[salt]


KeySpec = SecretKey | str | bytes | Path | None


def resolve_key(spec: KeySpec) -> SecretKey:
    """A SecretKey from a passphrase (str), raw key (32 bytes), key file (Path) or the default key file
    (None)."""
    if isinstance(spec, SecretKey):
        return spec
    if isinstance(spec, str):
        return SecretKey.from_passphrase(spec)
    if isinstance(spec, bytes):
        return SecretKey(raw=spec, source="raw key")
    return SecretKey.from_file(spec)


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process created it first; use theirs
    with os.fdopen(fd, "wb") as handle:
        handle.write(os.urandom(KEY_BYTES))
        handle.flush()
        os.fsync(handle.fileno())


def seal(plaintext: bytes, key: SecretKey, magic: bytes, version: int) -> bytes:
    salt = key.salt()
    nonce = os.urandom(NONCE_BYTES)
    header = _HEADER.pack(magic, version, key.kdf, salt, nonce)
    return header + AESGCM(key.derive(salt)).encrypt(nonce, plaintext, header[:-NONCE_BYTES])


def unseal(blob: bytes, key: SecretKey, magic: bytes, max_version: int, what: str) -> tuple[int, bytes]:
    """(format_version, plaintext) of a sealed blob; any doubt raises CheckpointError naming ``what``."""
    if len(blob) < _HEADER.size + 16 or blob[: len(magic)] != magic:
        raise CheckpointError(f"{what} is not a cbpt file of this kind (bad magic header)")
    _, version, kdf, salt, nonce = _HEADER.unpack_from(blob)
    if version > max_version:
        raise CheckpointError(f"{what} has format_version {version}; this client reads up to {max_version}")
    if kdf not in (KDF_KEY_FILE, KDF_SCRYPT):
        raise CheckpointError(f"{what} names an unknown key derivation ({kdf})")
    if kdf != key.kdf:
        wanted = "a passphrase" if kdf == KDF_SCRYPT else "a key file"
        raise CheckpointError(f"{what} was sealed with {wanted}, but {key.source} was given")
    try:
        plaintext = AESGCM(key.derive(salt)).decrypt(
            nonce, blob[_HEADER.size :], blob[: _HEADER.size - NONCE_BYTES]
        )
    except InvalidTag:
        raise CheckpointError(f"{what} failed authentication: wrong key, or the file was modified") from None
    return version, plaintext


AUTH_SCHEME = "hmac-sha256"
_AUTH_CONTEXT = b"cbpt authentication key v1"  # the MAC key is derived apart from the AES key


def authenticate(key: SecretKey, *parts: bytes) -> dict[str, str]:
    """A record (scheme, kdf, salt, tag) that binds ``parts`` together under ``key``."""
    salt = key.salt()
    kdf = "scrypt" if key.kdf == KDF_SCRYPT else "key-file"
    return {"scheme": AUTH_SCHEME, "kdf": kdf, "salt": salt.hex(), "tag": _tag(key, salt, parts).hex()}


def verify(record: object, key: SecretKey, *parts: bytes) -> str | None:
    """None when ``record`` authenticates ``parts`` under ``key``; else why not, in a few words."""
    if not isinstance(record, dict) or record.get("scheme") != AUTH_SCHEME:
        return "its authentication record is not one this client reads"
    wanted = KDF_SCRYPT if record.get("kdf") == "scrypt" else KDF_KEY_FILE
    if wanted != key.kdf:
        used = "a passphrase" if wanted == KDF_SCRYPT else "a key file"
        return f"it was authenticated with {used}, but {key.source} was given"
    try:
        salt, tag = bytes.fromhex(str(record["salt"])), bytes.fromhex(str(record["tag"]))
    except (KeyError, ValueError):
        return "its authentication record is malformed"
    if len(salt) != SALT_BYTES or not hmac.compare_digest(tag, _tag(key, salt, parts)):
        return "it failed authentication: wrong key, or it was modified"
    return None


def _tag(key: SecretKey, salt: bytes, parts: tuple[bytes, ...]) -> bytes:
    mac_key = hmac.new(key.derive(salt), _AUTH_CONTEXT, hashlib.sha256).digest()
    framed = b"".join(struct.pack(">Q", len(part)) + part for part in parts)  # no two splits collide
    return hmac.new(mac_key, framed, hashlib.sha256).digest()

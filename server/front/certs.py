"""Development certificates: a private CA, a server certificate and an optional client certificate (mTLS).

For a laptop, CI or a compose demo. A production deployment should use
certificates from its own CA. Keys are written 0600. The CA's private key is written beside
``--out``, not into it (``<out>-ca-key.pem`` unless ``ca_key`` says where): ``--out`` is the
folder a deployment mounts as secrets, and the server never needs the key that signs certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cbpt.common.files import write_atomic
from cbpt.server.errors import CertificateError

VALID_DAYS = 365


@dataclass(frozen=True)
class CertificatePaths:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path | None = None
    client_key: Path | None = None


def generate_dev_certificates(
    out: Path, hosts: list[str], client: bool = False, force: bool = False, ca_key: Path | None = None
) -> CertificatePaths:
    """Write ca.pem, server.pem (SAN = hosts) and optionally client.pem, each with a 0600 key, into
    ``out``; the CA key goes to ``ca_key`` (default ``<out>-ca-key.pem``, outside ``out``)."""
    if not hosts:
        raise CertificateError("--hosts needs at least one name or address")
    ca_key_path = ca_key if ca_key is not None else out.parent / f"{out.name}-ca-key.pem"
    if ca_key_path.resolve().parent == out.resolve():
        raise CertificateError(f"--ca-key {ca_key_path}: keep the CA key out of --out, the secrets folder")
    paths = CertificatePaths(
        ca_cert=out / "ca.pem",
        ca_key=ca_key_path,
        server_cert=out / "server.pem",
        server_key=out / "server-key.pem",
        client_cert=out / "client.pem" if client else None,
        client_key=out / "client-key.pem" if client else None,
    )
    existing = [p for p in vars(paths).values() if p is not None and p.exists()]
    if existing and not force:
        raise CertificateError(f"{existing[0]} already exists; pass --force to replace the certificates")
    out.mkdir(parents=True, exist_ok=True)

    ca_private = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("cbp-tuning development CA")
    ca_cert = (
        _builder(ca_name, ca_name, ca_private.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_private, hashes.SHA256())
    )
    _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths.ca_key, _key_pem(ca_private), private=True)

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        _builder(_name(hosts[0]), ca_name, server_key.public_key())
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .sign(ca_private, hashes.SHA256())
    )
    _write(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths.server_key, _key_pem(server_key), private=True)

    if client:
        assert paths.client_cert is not None and paths.client_key is not None
        _client_certificate(ca_cert, ca_private, "cbpt-client", paths.client_cert, paths.client_key)
    return paths


def issue_client_certificate(
    ca_cert: Path, ca_key: Path, name: str, out: Path, force: bool = False
) -> tuple[Path, Path]:
    """Another client certificate (subject CN ``name``) from an existing development CA: one per
    tenant under mTLS, where the certificate names the tenant. Returns (certificate, key) in ``out``."""
    from cbpt.server.front.keys import CERTIFICATE_NAME

    if not CERTIFICATE_NAME.fullmatch(name):
        raise CertificateError(f"client name {name!r}: use letters, digits, '.', '_', '@' or '-'")
    cert_path, key_path = out / f"{name}.pem", out / f"{name}-key.pem"
    existing = [path for path in (cert_path, key_path) if path.exists()]
    if existing and not force:
        raise CertificateError(f"{existing[0]} already exists; pass --force to replace it")
    try:
        ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        ca_private = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as error:
        raise CertificateError(f"cannot read the CA ({ca_cert}, {ca_key}): {error}") from None
    if not isinstance(ca_private, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{ca_key}: not the EC key of a cbpt development CA")
    out.mkdir(parents=True, exist_ok=True)
    _client_certificate(ca, ca_private, name, cert_path, key_path)
    return cert_path, key_path


def _client_certificate(
    ca_cert: x509.Certificate,
    ca_private: ec.EllipticCurvePrivateKey,
    name: str,
    cert_path: Path,
    key_path: Path,
) -> None:
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = (
        _builder(_name(name), ca_cert.subject, client_key.public_key())
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .sign(ca_private, hashes.SHA256())
    )
    _write(cert_path, client_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(key_path, _key_pem(client_key), private=True)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
    )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool) -> None:
    """Atomically, with its final mode from the start, so a key is never briefly world-readable."""
    write_atomic(path, data, mode=0o600 if private else 0o644)

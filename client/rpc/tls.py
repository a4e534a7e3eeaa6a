"""TLS settings of a client channel: the CA that signed the server's certificate, and mTLS credentials."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from cbpt.client.errors import ClientError


@dataclass(frozen=True)
class TLSConfig:
    """Certificates for a TLS channel; each is a PEM path or PEM bytes. Client cert + key give mTLS."""

    root_certificates: Path | bytes | None = None
    client_cert: Path | bytes | None = None
    client_key: Path | bytes | None = None
    server_name: str | None = None  # when the certificate names another host than the target

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.client_cert is None) != (self.client_key is None):
            raise ClientError("mTLS needs both a client certificate and a client key")
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.root_certificates, "root certificates"),
            private_key=_pem(self.client_key, "client key"),
            certificate_chain=_pem(self.client_cert, "client certificate"),
        )


def _pem(source: Path | bytes | str | None, what: str) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    try:
        return Path(source).expanduser().read_bytes()
    except OSError as error:
        raise ClientError(f"cannot read {what} {source}: {error.strerror}") from error

"""Container health probe: asks the server's grpc.health.v1 service over TLS; exit 0 only when SERVING.

Uses only grpcio and grpcio-health-checking (installed with the client), so it
can run in any image that has the cbp-tuning client. Health stays outside API
key auth, so the probe needs the CA (and a client certificate only under mTLS).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default=os.environ.get("CBPT_HEALTH_TARGET", "localhost:50051"))
    parser.add_argument("--service", default="cbpt.v1.Tuning", help='"" asks about the whole server')
    parser.add_argument(
        "--ca", type=Path, default=os.environ.get("CBPT_HEALTH_CA"), help="CA of the server cert"
    )
    parser.add_argument("--cert", type=Path, default=None, help="client certificate (mTLS only)")
    parser.add_argument("--key", type=Path, default=None, help="client key (mTLS only)")
    parser.add_argument("--plaintext", action="store_true", help="no TLS (a loopback dev server)")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)

    if args.plaintext:
        channel = grpc.insecure_channel(args.target)
    else:
        if args.ca is None:
            print("unhealthy: --ca is required unless --plaintext", file=sys.stderr)
            return 2
        credentials = grpc.ssl_channel_credentials(
            root_certificates=args.ca.read_bytes(),
            private_key=args.key.read_bytes() if args.key else None,
            certificate_chain=args.cert.read_bytes() if args.cert else None,
        )
        channel = grpc.secure_channel(args.target, credentials)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {status}", file=sys.stderr)
        return 1
    print(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())

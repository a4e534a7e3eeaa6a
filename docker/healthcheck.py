"""Container health probe: asks the server's grpc.health.v1 service; exit 0 only when SERVING.

Runs in the server image (``cbpt.server.front.probe`` needs the [server] extra's grpcio-health-checking).
Health stays outside API key auth, so the probe needs the CA (and a client certificate only under mTLS).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc

from cbpt.server.front.probe import channel_to, check


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
    if not args.plaintext and args.ca is None:
        print("unhealthy: --ca is required unless --plaintext", file=sys.stderr)
        return 2
    with channel_to(args.target, None if args.plaintext else args.ca, args.cert, args.key) as channel:
        try:
            status = check(channel, args.service, args.timeout)
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    if status != "SERVING":
        print(f"unhealthy: {status}", file=sys.stderr)
        return 1
    print(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())

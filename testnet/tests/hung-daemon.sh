#!/usr/bin/env bash
# A Docker daemon that stops answering must not hang testnet/run: with a docker (and
# docker-compose) whose every call hangs, 'testnet/run down' must end within a minute, say
# that the daemon stopped answering, and exit non-zero (the teardown is incomplete).
set -euo pipefail
cd "$(dirname "$0")/../.."
fake=$(mktemp -d)
trap 'rm -rf "$fake"; rm -f testnet/runs/current' EXIT
printf '#!/bin/sh\nexec sleep 1000\n' > "$fake/docker"
cp "$fake/docker" "$fake/docker-compose"
chmod +x "$fake/docker" "$fake/docker-compose"
mkdir -p "$fake/run/logs" testnet/runs
[[ -e testnet/runs/current ]] && { echo "a testnet is up; not touching it" >&2; exit 1; }
printf 'project=fmhung\ncompose_file=%s/compose.yml\nrun_dir=%s/run\nnames="boot1 req1"\n' "$fake" "$fake" > testnet/runs/current
start=$SECONDS
rc=0
out=$(PATH="$fake:$PATH" DOCKER_TIMEOUT=1 COMPOSE_TIMEOUT=1 timeout 120 testnet/run down 2>&1) || rc=$?
took=$((SECONDS - start))
fail() { echo "hung-daemon: $1"; echo "$out"; echo "0 passed, 1 failed"; exit 1; }
(( rc != 124 )) || fail "testnet/run down hung for 120 s"
(( rc != 0 )) || fail "testnet/run down claimed success with a hung daemon"
(( took <= 60 )) || fail "testnet/run down took ${took}s"
grep -q "stopped answering" <<< "$out" || fail "no word that the daemon stopped answering"
echo "hung-daemon: testnet/run down ended in ${took}s with status $rc and said why"
echo "1 passed, 0 failed"

#!/usr/bin/env bash
# 'testnet/run clean' removes what a killed run left behind (containers and networks labelled
# fleetmesh.testnet) and keeps the testnet that 'testnet/run up' left running. Uses an empty
# image made here (docker import of an empty tar): nothing is pulled, nothing is started.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -e testnet/runs/current ]] && { echo "a testnet is up; not touching it" >&2; exit 1; }
mkdir -p testnet/runs
gone=fmclean$$ kept=fmkeep$$
cleanup() {
  timeout 30 docker rm -f "$gone-n1" "$kept-n1" >/dev/null 2>&1 || true
  timeout 30 docker network rm "${gone}_a" "${kept}_a" >/dev/null 2>&1 || true
  timeout 30 docker rmi fleetmesh-empty:test >/dev/null 2>&1 || true
  rm -f testnet/runs/current
}
trap cleanup EXIT
tar cf - --files-from /dev/null | timeout 60 docker import - fleetmesh-empty:test >/dev/null
for p in "$gone" "$kept"; do
  timeout 30 docker network create --label "fleetmesh.testnet=$p" "${p}_a" >/dev/null
  timeout 30 docker create --label "fleetmesh.testnet=$p" --network "${p}_a" --name "$p-n1" fleetmesh-empty:test /none >/dev/null
done
printf 'project=%s\ncompose_file=/nonexistent\nrun_dir=/nonexistent\nnames="n1"\n' "$kept" > testnet/runs/current
out=$(timeout 120 testnet/run clean 2>&1) || { echo "clean: testnet/run clean failed:"; echo "$out"; echo "0 passed, 1 failed"; exit 1; }
fail() { echo "clean: $1"; echo "$out"; echo "0 passed, 1 failed"; exit 1; }
timeout 30 docker inspect "$gone-n1" >/dev/null 2>&1 && fail "the leftover container $gone-n1 is still there"
[[ -z $(timeout 30 docker network ls -q --filter "name=^${gone}_") ]] || fail "the leftover network ${gone}_a is still there"
timeout 30 docker inspect "$kept-n1" >/dev/null 2>&1 || fail "the running testnet's container $kept-n1 was removed"
[[ -n $(timeout 30 docker network ls -q --filter "name=^${kept}_") ]] || fail "the running testnet's network was removed"
grep -q "removing leftover testnet $gone: 1 containers" <<< "$out" || fail "it did not say what it removed"
echo "clean: removed the leftover testnet, kept the one that is up"
echo "1 passed, 0 failed"

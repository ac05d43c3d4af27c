#!/usr/bin/env bash
# 'testnet/run clean' removes what a killed run left behind (containers and networks labelled
# fleetmesh.testnet whose testnet/run is gone) and keeps: the testnet 'testnet/run up' left
# running here, one whose testnet/run still runs, one meant to stay up, one made elsewhere
# (another host or pid namespace) and one whose run cannot be told (no pid): the last three
# until --all.
# Uses an empty image made here (docker import of an empty tar): nothing is pulled or started.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -e testnet/runs/current ]] && { echo "a testnet is up; not touching it" >&2; exit 1; }
mkdir -p testnet/runs
source <(sed -n '/^process_id()/,/^}/p; /^host_id()/,/^}/p' testnet/run)
here=$(host_id)
[[ -n $here ]] || { echo "clean: this host cannot be named (no /proc?); clean removes nothing here by default"; echo "0 passed, 1 failed"; exit 1; }
gone=fmgone$$ up=fmup$$ live=fmlive$$ stays=fmstays$$ away=fmaway$$ unknown=fmunknown$$
all=("$gone" "$up" "$live" "$stays" "$away" "$unknown")
sleep 300 & alive=$!
cleanup() {
  kill "$alive" 2>/dev/null || true
  for p in "${all[@]}"; do
    timeout 30 docker rm -f "$p-n1" >/dev/null 2>&1 || true
    timeout 30 docker network rm "${p}_a" >/dev/null 2>&1 || true
  done
  timeout 30 docker rmi fleetmesh-empty:test >/dev/null 2>&1 || true
  rm -f testnet/runs/current
}
trap cleanup EXIT
tar cf - --files-from /dev/null | timeout 60 docker import - fleetmesh-empty:test >/dev/null
# A pid that has ended: a subshell's.
dead=$(bash -c 'echo $$')
make() { # make <project> <owner> <keep> [host]
  local labels=(--label "fleetmesh.testnet=$1" --label "fleetmesh.testnet.host=${4:-$here}"
    --label "fleetmesh.testnet.pid=$2" --label "fleetmesh.testnet.keep=$3")
  timeout 30 docker network create "${labels[@]}" "${1}_a" >/dev/null
  timeout 30 docker create "${labels[@]}" --network "${1}_a" --name "$1-n1" fleetmesh-empty:test /none >/dev/null
}
make "$gone" "$dead/1" 0
make "$up" "$dead/1" 1
make "$live" "$(process_id "$alive")" 0
make "$stays" "$dead/1" 1
make "$away" "$dead/1" 0 "${here%/*}/1"   # the same host name and boot, another pid namespace
make "$unknown" "" 0
printf 'project=%s\ncompose_file=/nonexistent\nrun_dir=/nonexistent\nnames="n1"\n' "$up" > testnet/runs/current
there() { timeout 30 docker inspect "$1-n1" >/dev/null 2>&1 && [[ -n $(timeout 30 docker network ls -q --filter "name=^${1}_") ]]; }
gone() { ! timeout 30 docker inspect "$1-n1" >/dev/null 2>&1 && [[ -z $(timeout 30 docker network ls -q --filter "name=^${1}_") ]]; }
fail() { echo "clean: $1"; echo "$out"; echo "0 passed, 1 failed"; exit 1; }
out=$(timeout 120 testnet/run clean 2>&1) || fail "testnet/run clean failed"
gone "$gone" || fail "the leftover testnet $gone is still there"
there "$up" || fail "the testnet 'up' left running was removed"
there "$live" || fail "a testnet whose testnet/run still runs was removed"
there "$stays" || fail "a testnet meant to stay up was removed without --all"
there "$away" || fail "a testnet made in another pid namespace was removed without --all"
there "$unknown" || fail "a testnet whose run cannot be told was removed without --all"
grep -q "removing leftover testnet $gone: 1 containers" <<< "$out" || fail "it did not say what it removed"
# --all removes every testnet on this daemon: only tried when the others are this test's.
others=$( { timeout 30 docker ps -a --filter label=fleetmesh.testnet --format '{{.Label "fleetmesh.testnet"}}'
  timeout 30 docker network ls --filter label=fleetmesh.testnet --format '{{.Label "fleetmesh.testnet"}}'; } \
  | grep -vx -e "$up" -e "$live" -e "$stays" -e "$away" -e "$unknown" || true)
if [[ -z $others ]]; then
  out=$(timeout 120 testnet/run clean --all 2>&1) || fail "testnet/run clean --all failed"
  gone "$live" && gone "$stays" && gone "$away" && gone "$unknown" || fail "--all left a testnet behind"
  there "$up" || fail "--all removed the testnet 'up' left running in this checkout"
  echo "clean: removed the leftover, kept the running and the staying ones (until --all) and the one up here"
else
  echo "clean: removed the leftover, kept the running and the staying ones and the one up here (--all not tried: other testnets run)"
fi
echo "1 passed, 0 failed"

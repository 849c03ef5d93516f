#!/usr/bin/env bash
# Runs the test suite against real servers: a throwaway PostgreSQL cluster and a Redis, both on
# free loopback ports in a temporary directory, stopped again however pytest ends.
# Usage: tests/run.sh [pytest args...]   (make test calls it; a full run ends with tests/wheel_smoke.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

need_root_for_apt() { [ "$(id -u)" = 0 ] || { echo "tests/run.sh: $1 is missing; install it (as root: apt-get install -y $2)" >&2; exit 1; }; }
if ! command -v redis-server >/dev/null; then
  need_root_for_apt redis-server redis-server
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
[ -x "$PGBIN/initdb" ] || PGBIN=$(dirname "$(command -v initdb || true)")
if [ ! -x "$PGBIN/initdb" ]; then
  need_root_for_apt initdb postgresql
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
TMP=$(mktemp -d /tmp/selectit-test.XXXXXX)
chmod 755 "$TMP"
PGPORT=$(free_port); REDISPORT=$(free_port)

# PostgreSQL refuses to run as root: run the cluster as the `postgres` user when we are root.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" = 0 ]; then id postgres >/dev/null 2>&1 || useradd -r postgres; fi
mkdir -p "$TMP/pg" && [ "$(id -u)" != 0 ] || chown postgres "$TMP/pg"

cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$TMP/pg/data" -m immediate stop >/dev/null 2>&1 || true
  [ -f "$TMP/redis.pid" ] && kill "$(cat "$TMP/redis.pid")" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

as_pg "$PGBIN/initdb" -D "$TMP/pg/data" -U selectit --auth=trust -E UTF8 --locale=C.UTF-8 >"$TMP/initdb.log" 2>&1 \
  || { cat "$TMP/initdb.log"; exit 1; }
as_pg "$PGBIN/pg_ctl" -D "$TMP/pg/data" -l "$TMP/pg/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $TMP/pg -c fsync=off -c max_connections=200" start >/dev/null
redis-server --bind 127.0.0.1 --port "$REDISPORT" --save "" --appendonly no --daemonize yes \
  --pidfile "$TMP/redis.pid" --logfile "$TMP/redis.log" --dir "$TMP"

export SELECTIT_TEST_POSTGRES_URL="postgresql+psycopg://selectit@127.0.0.1:$PGPORT/postgres"
export SELECTIT_TEST_REDIS_URL="redis://127.0.0.1:$REDISPORT/0"
export SELECTIT_TEST_REDIS_PORT="$REDISPORT" SELECTIT_TEST_TMP="$TMP"
export SELECTIT_TEST_REQUIRE_SERVICES=1  # a missing server fails the run instead of skipping tests
# Tests run on pytest-xdist workers, one per CPU by default (SELECTIT_TEST_WORKERS=1: one process). Much of
# the suite waits on subprocesses, servers and disks, so the workers overlap that; each worker's torch
# gets its share of the CPUs rather than all of them (threads spinning against each other are slower).
CPUS=$(nproc)
WORKERS=${SELECTIT_TEST_WORKERS:-$CPUS}
if [ "$WORKERS" -gt 1 ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( CPUS / WORKERS > 0 ? CPUS / WORKERS : 1 ))}
  "$PY" -m pytest -n "$WORKERS" "$@"
else
  "$PY" -m pytest "$@"
fi

# A whole-suite run (no arguments picking some tests) goes on with the tests that need vLLM in its
# own environment — the vLLM engine, and the openai engine against `vllm serve` — (`make venv-vllm`;
# SELECTIT_TEST_VLLM=1 or 0 forces them on or off), then with the installed wheel from another
# directory (tests/wheel_smoke.sh; SELECTIT_WHEEL_SMOKE=1 or 0).
whole=1
for arg in "$@"; do case "$arg" in tests*|*.py|*::*|-k*) whole=0 ;; esac; done
vllm=${SELECTIT_TEST_VLLM:-auto}
VLLM_PY=${VLLM_PYTHON:-.venv-vllm/bin/python}
if [ "$vllm" = auto ]; then
  vllm=$whole
  # `make test` builds it; a bare tests/run.sh without it says so and goes on
  [ "$vllm" = 1 ] && [ ! -x "$VLLM_PY" ] && { echo "tests/run.sh: no $VLLM_PY: the vLLM tests are left out (make venv-vllm)"; vllm=0; }
fi
if [ "$vllm" = 1 ]; then
  [ -x "$VLLM_PY" ] || { echo "tests/run.sh: $VLLM_PY is missing; run \`make venv-vllm\` (or SELECTIT_TEST_VLLM=0)" >&2; exit 1; }
  # One file a worker: the in-process engine's load and `vllm serve`'s start overlap (each loads
  # vLLM for a minute or more, much of it importing on one core).
  "$VLLM_PY" -m pytest -q -n 2 --dist loadfile tests/scoring/test_vllm_engine.py tests/scoring/test_openai_vllm_server.py
fi
smoke=${SELECTIT_WHEEL_SMOKE:-auto}
[ "$smoke" = auto ] && smoke=$whole
[ "$smoke" = 1 ] && PYTHON="$PY" bash tests/wheel_smoke.sh
exit 0

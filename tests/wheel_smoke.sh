#!/usr/bin/env bash
# The wheel, used as a stranger would: build it, install it into a fresh virtual environment that
# cannot see this checkout, and run the main commands from another directory.
#   init → ingest → model add (tiny model) → score → rank → export, plus the namespaced Celery app
#   (`import selectit.workers.app` works, `import workers` does not).
# Dependencies: the fresh venv gets the wheel itself (--no-deps), then a .pth line pointing at the
# checkout venv's site-packages, so no 2 GB of torch is installed again. `.pth` files *inside* that
# directory are not processed, so the checkout's editable install stays invisible; the script
# checks that every requirement of the wheel is met and that `selectit` comes from the wheel.
# Usage: tests/wheel_smoke.sh   (tests/run.sh calls it after the test suite)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d /tmp/selectit-wheel.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
step() { echo "wheel smoke: $*" >&2; }

step "building the wheel"
# setuptools reuses ./build: a stale one would put files of an older tree into the wheel.
rm -rf "$ROOT/build"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$ROOT" >/dev/null
WHEEL=$(ls "$WORK"/dist/selectit-*.whl)
"$PY" - "$WHEEL" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
outside = [n for n in names if not n.startswith(("selectit/", "selectit-"))]
assert not outside, f"the wheel holds files outside selectit/: {outside}"
for part in ("selectit/workers/app.py", "selectit/_alembic/env.py", "selectit/_alembic/script.py.mako",
             "selectit/migrations/0001_initial_schema.py", "selectit/data/alpaca_en_demo.json"):
    assert part in names, f"the wheel lacks {part}"
PY

step "installing $(basename "$WHEEL") into a fresh venv"
BASE=$("$PY" -c 'import sys; print(sys.base_prefix)')
"$BASE/bin/python3" -m venv "$WORK/venv"
V="$WORK/venv/bin"
"$V/python" -m pip install -q --no-deps --no-index "$WHEEL"
DEPS=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
SITE=$("$V/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$DEPS" > "$SITE/zz_checkout_venv_dependencies.pth"

TINY="$WORK/tiny-model"
"$PY" "$ROOT/tests/tiny_model.py" "$TINY" >/dev/null

mkdir "$WORK/elsewhere" && cd "$WORK/elsewhere"
export PYTHONPATH="" SELECTIT_DATABASE_URL="sqlite:///$WORK/elsewhere/smoke.db"
unset SELECTIT_SCORER
"$V/python" - "$SITE" <<'PY'
import sys
from importlib import metadata
import selectit

site = sys.argv[1]
assert selectit.__file__.startswith(site), f"selectit imported from {selectit.__file__}, not the wheel"
dist = metadata.distribution("selectit")
assert str(dist.locate_file("")).startswith(site), "the selectit metadata is not the wheel's"
missing = []
for req in dist.requires or []:
    if "extra ==" in req and "scoring" not in req:
        continue
    name = req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip()
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        missing.append(req)
assert not missing, f"requirements not met: {missing}"
PY
if "$V/python" -c "import workers" 2>/dev/null; then
  echo "wheel smoke: a top-level 'workers' package is importable from the wheel's venv" >&2; exit 1
fi
"$V/python" -c "import selectit.workers.app, selectit.migrations, selectit._alembic"

step "init, ingest, model add, score, rank, export from $PWD"
"$V/python" - <<'PY'
import json
records = [{"instruction": f"Add {i} and {i}.", "input": "", "output": str(2 * i)} for i in range(1, 6)]
json.dump(records, open("tiny.json", "w"))
PY
S="$V/selectit"
"$S" init | grep -q "upgraded: empty"
"$S" prompts | grep -q default
"$S" ingest tiny.json --dataset tiny
"$S" model add tiny --source "$TINY" --dtype float32
"$S" score --dataset tiny
"$S" rank --dataset tiny --limit 3
"$S" export --dataset tiny --top 0.4 --out selected.json
"$V/python" -c "import json; rows = json.load(open('selected.json')); assert len(rows) == 2, rows"
if [ -n "${SELECTIT_TEST_REDIS_URL:-}" ]; then  # tests/run.sh's Redis: a real worker by the documented name
  step "celery -A selectit.workers.app worker"
  SELECTIT_BROKER_URL=$SELECTIT_TEST_REDIS_URL timeout -s INT 60 "$V/python" -m celery -A selectit.workers.app \
    worker -Q control --pool solo --without-gossip --without-mingle -n smoke@%h -l INFO >celery.log 2>&1 &
  CELERY=$!
  for _ in $(seq 120); do grep -q " ready\." celery.log && break; sleep 0.5; done
  kill -INT "$CELERY" 2>/dev/null || true; wait "$CELERY" || true
  grep -q " ready\." celery.log || { cat celery.log >&2; echo "wheel smoke: the Celery worker did not start" >&2; exit 1; }
fi
step "ok"

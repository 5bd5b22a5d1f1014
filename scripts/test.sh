#!/usr/bin/env bash
# `make test`: every test tier. The upgrade VM chain (one node, ~30 min under emulation) runs in
# a second pytest beside everything else: a TCG guest keeps one core busy, so two of them use
# both cores of a small host. Both share one image build (tests/vm/conftest.py, under a lock).
# With arguments (`make test PYTEST_ARGS=...`) it is a plain single pytest run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

if [ $# -gt 0 ]; then
  exec "$PY" -m pytest -q "$@"
fi

work=$(mktemp -d /var/tmp/kairos-test.XXXXXX)
bg_pid=
cleanup() {
  [ -n "$bg_pid" ] && kill "$bg_pid" 2>/dev/null
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export KAIROS_VM_SHARED_BUILD="$work/build"
mkdir -p "$KAIROS_VM_SHARED_BUILD"

start=$(date +%s)
"$PY" -m pytest -q -p no:cacheprovider --basetemp="$work/upgrade" tests/vm/test_upgrade.py \
  >"$work/upgrade.log" 2>&1 &
bg_pid=$!
"$PY" -m pytest -q --basetemp="$work/main" --ignore=tests/vm/test_upgrade.py
main_rc=$?
wait "$bg_pid"
upgrade_rc=$?
bg_pid=
echo
echo "==================== tests/vm/test_upgrade.py (ran alongside) ===================="
cat "$work/upgrade.log"
echo "make test: $(( $(date +%s) - start )) s; rest exit $main_rc, upgrade chain exit $upgrade_rc"
[ "$main_rc" -eq 0 ] && [ "$upgrade_rc" -eq 0 ]

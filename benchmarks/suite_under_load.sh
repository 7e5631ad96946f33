#!/usr/bin/env bash
# The whole test suite on a busy machine: two CPU-bound processes (Python busy loops) run beside
# the README's test command's pytest, as on a developer's workstation shared with other work.
# The suite must pass with no re-run. Prints pytest's result, the wall time and the load.
#   bash benchmarks/suite_under_load.sh                  # from the repository root, venv installed
#   BURNERS=4 bash benchmarks/suite_under_load.sh -m "not slow"   # arguments go to pytest
# No variable needs to be set (tests/conftest.py keeps the tests offline), none is set here.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BURNERS=${BURNERS:-2}

burners=()
for _ in $(seq "$BURNERS"); do
  "$PY" -c 'while True: pass' &
  burners+=($!)
done
stop_burners() { [ ${#burners[@]} -gt 0 ] && kill "${burners[@]}" 2>/dev/null; burners=(); }
trap stop_burners EXIT

echo "suite_under_load: $BURNERS busy loop(s) started (pids ${burners[*]}); load: $(cut -d' ' -f1-3 /proc/loadavg)"
began=$(date +%s)
"$PY" -m pytest "$@"
code=$?
elapsed=$(( $(date +%s) - began ))
load=$(cut -d' ' -f1-3 /proc/loadavg)
stop_burners

echo "suite_under_load: pytest $* exited $code after ${elapsed}s ($(( elapsed / 60 ))m$(( elapsed % 60 ))s) beside $BURNERS busy loop(s) on $(nproc) core(s); load at the end: $load"
exit "$code"

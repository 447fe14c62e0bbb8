#!/usr/bin/env bash
# The whole test suite: set up ./.venv if needed, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
# Two pytest workers (one per core of the reference machine), each test file on one worker so that a file's
# framework imports and fixtures are shared; one framework thread per worker so the two do not oversubscribe
# the cores. Files go to the workers in collection order, the heavy ones first (tests/conftest.py), not xdist's
# most-tests-first order. UNIDL_TEST_WORKERS=0 runs everything in this one process.
export UNIDL_NUM_THREADS="${UNIDL_NUM_THREADS:-1}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
workers="${UNIDL_TEST_WORKERS:-2}"
main_run=(.venv/bin/python -m pytest)
if [ "$workers" != "0" ]; then
  main_run+=(-n "$workers" --dist loadfile --no-loadscope-reorder)
fi

# The keras backend's tests again on Keras-on-JAX and Keras-on-torch: Keras reads KERAS_BACKEND once, when it is
# imported, so the main run covers Keras-on-TensorFlow only, and each other framework is a pytest process of its
# own, running the files below with UNIDL_TEST_KERAS_ONLY=1 (only the tests run on the keras backend,
# tests/conftest.py): the parity suite and the files whose claims docs/guarantees.md names for every Keras framework.
# Made for the whole suite only: an argument naming a file or folder (`tests/nn`, `tests/x.py::test_y`) runs that
# selection alone, as before. The caller's other arguments (`-q`, `-x`, `-k lstm`) apply to these runs too.
# UNIDL_TEST_KERAS_HOSTS picks the frameworks ("jax torch"; empty: none).
keras_hosts="${UNIDL_TEST_KERAS_HOSTS-jax torch}"
keras_files=(tests/parity tests/nn/test_freeze.py tests/test_dynamic_forward.py tests/test_precision.py
             tests/test_export_inputs_outputs.py)
for arg in "$@"; do
  case "$arg" in
    -*) ;;
    *) if [ -e "${arg%%::*}" ]; then keras_hosts=""; fi ;;
  esac
done
if [ -z "${keras_hosts// /}" ]; then
  exec "${main_run[@]}" "$@"
fi

logs="$(mktemp -d)"
pids=()
trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$logs"' EXIT
keras_run() {  # $1: the framework, $2: its niceness; the rest: pytest's arguments. Its output goes to $logs.
  local host="$1" niceness="$2"
  shift 2
  KERAS_BACKEND="$host" UNIDL_TEST_KERAS_ONLY=1 exec nice -n "$niceness" .venv/bin/python -m pytest "$@" \
    "${keras_files[@]}" >"$logs/$host.out" 2>&1
}
status=0
declare -A keras_status
if [ "$workers" = "0" ]; then  # one process at a time, as asked
  "${main_run[@]}" "$@" || status=$?
  for host in $keras_hosts; do
    keras_status[$host]=0
    (keras_run "$host" 0 "$@") || keras_status[$host]=$?
  done
else
  # Started at once, at a low priority: they take the cores the main run leaves idle (while a test waits on a
  # subprocess, and the main run's last files, which keep one worker busy) and barely slow the main run.
  for host in $keras_hosts; do
    keras_run "$host" 10 "$@" &
    pids+=("$!")
  done
  "${main_run[@]}" "$@" || status=$?
  index=0
  for host in $keras_hosts; do
    keras_status[$host]=0
    wait "${pids[$index]}" || keras_status[$host]=$?
    index=$((index + 1))
  done
  pids=()
fi
for host in $keras_hosts; do
  echo
  echo "=== the keras backend on $host: KERAS_BACKEND=$host UNIDL_TEST_KERAS_ONLY=1 pytest ${keras_files[*]}" \
       "(exit ${keras_status[$host]})"
  cat "$logs/$host.out"
  # 5: no test selected (the caller's -k kept none of these)
  if [ "$status" = "0" ] && [ "${keras_status[$host]}" != "0" ] && [ "${keras_status[$host]}" != "5" ]; then
    status="${keras_status[$host]}"
  fi
done
exit "$status"

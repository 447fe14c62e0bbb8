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
# imported, so the main run covers Keras-on-TensorFlow only, and each other framework runs in pytest processes of
# its own, with UNIDL_TEST_KERAS_ONLY=1 (only the tests run on the keras backend, tests/conftest.py): the parity
# suite with the layers' tables against torch in one, the other files whose claims docs/guarantees.md names for
# every Keras framework in another. CPU seconds (one thread, JAX's compile cache cold, load ~7 on the 2 shared
# cores, where CPU time reads higher than on an idle machine): on JAX 490 and ~395, on torch 20-40 and 270, of
# which test_traced_functions.py's torch.compile of its jit-compiled functions 87 in the process and most of the
# 110 its compile workers took. The layers', models' and workload examples' files (issue 15) take 215-220 s of
# JAX's: test_workload_examples.py 57 (XLA compiling Keras's jitted train and evaluate steps of the examples'
# ResNet and two classifiers), tests/models/test_sequence_models.py 30 and test_resnet.py 22, the tables of
# tests/nn/test_rnn.py, test_attention.py and test_transformer.py 22-30 each (float64 eagerly there: each op a
# program), the other six 32; and 9 s of torch's (alone, each file took 9-16 s, 8 of them imports, which the
# processes here share). The tables (94 s on JAX) go with the parity suite, the rest with the other files: all in
# the second, JAX's two took 400 and 490 s, no better (one of them runs last, alone on one core). A third process
# would cost one more import of every framework (~8 s of CPU each) for at most ~45 s less of JAX's last process
# (885 s over 2 cores, 443 at best, against 490), while the four processes share the 2 cores with the main run.
# Made for the whole suite only: an argument naming a file or folder (`tests/nn`, `tests/x.py::test_y`) runs that
# selection alone, as before. Of the caller's other arguments the Keras runs take those that choose and report
# tests (`-q`, `-v`, `-x`, `-k EXPR`, `-m EXPR`, `-r...`, `--tb=...`, `--maxfail=N`, `--durations=N`); the ones that
# write a run-wide file or read the last run's (`--junitxml`, `--lf`, `--basetemp`, ...) are the main run's alone,
# and the Keras runs keep no cache (their results would overwrite the main run's), except that `--junitxml=FILE`
# gives each Keras run its own report beside FILE (FILE.keras-<framework>-<parity|others>.xml).
# UNIDL_TEST_KERAS_HOSTS picks the frameworks ("jax torch"; empty: none).
keras_hosts="${UNIDL_TEST_KERAS_HOSTS-jax torch}"
keras_groups=("tests/parity tests/nn/test_rnn.py tests/nn/test_attention.py tests/nn/test_transformer.py
               tests/nn/test_transformer_padding.py tests/nn/test_pytorch_state_dicts.py"
              "tests/nn/test_freeze.py tests/test_dynamic_forward.py tests/test_precision.py
               tests/test_export_inputs_outputs.py tests/backends/test_keras_jax_step_checks.py
               tests/backends/test_traced_functions.py tests/test_scan_value_checks.py tests/nn/test_sparse.py
               tests/test_autograd.py tests/nn/test_containers.py tests/nn/test_replace_head.py tests/test_scan.py
               tests/models tests/test_workload_examples.py")
keras_group_names=(parity others)  # (in their JUnit reports' names)
keras_args=(-p no:cacheprovider)
junit=""
takes_value=""  # the option whose value the next argument is
for arg in "$@"; do
  if [ -n "$takes_value" ]; then
    case "$takes_value" in
      -k|-m|--maxfail|--tb|-r|--durations) keras_args+=("$arg") ;;
      --junitxml|--junit-xml) junit="$arg" ;;
    esac
    takes_value=""
    continue
  fi
  case "$arg" in
    -k|-m|--maxfail|--tb|-r|--durations) keras_args+=("$arg"); takes_value="$arg" ;;
    -p|-c|-o|-W|--junitxml|--junit-xml|--basetemp|--rootdir|--deselect|--ignore|--ignore-glob|--confcutdir|\
    --log-file|--cov|--cov-report|--override-ini|--pythonwarnings|--dist|-n|--numprocesses) takes_value="$arg" ;;
    --junitxml=*|--junit-xml=*) junit="${arg#*=}" ;;
    -q|-qq|-v|-vv|-x|--exitfirst|-s|-l|--showlocals|-r*|--tb=*|--maxfail=*|--durations=*|-k?*|-m?*)
      keras_args+=("$arg") ;;
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
runs=()  # "host group": the group's index in keras_groups
for host in $keras_hosts; do
  for group in "${!keras_groups[@]}"; do runs+=("$host $group"); done
done
keras_run() {  # $1: the framework, $2: the group, $3: its niceness. Output in $logs.
  local host="$1" group="$2" niceness="$3"
  local report=()
  if [ -n "$junit" ]; then report=("--junitxml=$junit.keras-$host-${keras_group_names[$group]}.xml"); fi
  # shellcheck disable=SC2086  # (the group's files, split)
  # (PYTEST_ADDOPTS, which pytest reads in every run, is the main run's alone: a --junitxml there was overwritten)
  PYTEST_ADDOPTS="" KERAS_BACKEND="$host" UNIDL_TEST_KERAS_ONLY=1 exec nice -n "$niceness" .venv/bin/python -m pytest \
    "${keras_args[@]}" "${report[@]}" ${keras_groups[$group]} >"$logs/$host-$group.out" 2>&1
}
status=0
declare -A run_status
if [ "$workers" = "0" ]; then  # one process at a time, as asked
  "${main_run[@]}" "$@" || status=$?
  for run in "${runs[@]}"; do
    run_status[$run]=0
    (keras_run $run 0) || run_status[$run]=$?
  done
else
  # Started at once, at a low priority: they take the cores the main run leaves idle (while a test waits on a
  # subprocess, and the main run's last files, which keep one worker busy) and barely slow the main run.
  for run in "${runs[@]}"; do
    keras_run $run 10 &
    pids+=("$!")
  done
  "${main_run[@]}" "$@" || status=$?
  for index in "${!runs[@]}"; do
    run_status[${runs[$index]}]=0
    wait "${pids[$index]}" || run_status[${runs[$index]}]=$?
  done
  pids=()
fi
for run in "${runs[@]}"; do
  read -r host group <<<"$run"
  read -r -d '' -a files <<<"${keras_groups[$group]}" || true
  echo
  echo "=== the keras backend on $host: KERAS_BACKEND=$host UNIDL_TEST_KERAS_ONLY=1 pytest ${files[*]}" \
       "(exit ${run_status[$run]})"
  cat "$logs/$host-$group.out"
  # 5: no test selected (the caller's -k kept none of these)
  if [ "$status" = "0" ] && [ "${run_status[$run]}" != "0" ] && [ "${run_status[$run]}" != "5" ]; then
    status="${run_status[$run]}"
  fi
done
exit "$status"

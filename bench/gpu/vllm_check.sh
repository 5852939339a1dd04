#!/usr/bin/env bash
# vLLM on a GPU: serve the default model's transformers folder, run the served-model checks
# (tests/model/test_served.py) and the throughput run (bench/serve.py) against it (issue 14).
#
# Run from anywhere, in the project's virtual environment, on a machine with a GPU and vLLM:
#   pip install vllm && bash bench/gpu/vllm_check.sh
# Output in $OUT (default bench/gpu/out): vllm.log, checks.txt, serve.json, serve.txt.
# PORT (default 8765) and VLLM_ARGS (extra `vllm serve` options) may be set.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1
PORT=${PORT:-8765}
OUT=${OUT:-bench/gpu/out}
mkdir -p "$OUT"

if ! command -v vllm >/dev/null 2>&1; then
    echo "vllm is not installed: pip install vllm" >&2
    exit 2
fi
# The folder lmql_lite converts the default GGUF into (built on first use). vLLM serves it
# under its path, which is also where the client loads the tokenizer from.
FOLDER=$(python -c 'from lmql_lite.models.transformers import _default_folder; print(_default_folder())')

# shellcheck disable=SC2086  # VLLM_ARGS is a list of options
vllm serve "$FOLDER" --host 127.0.0.1 --port "$PORT" --dtype float16 --max-model-len 2048 \
    ${VLLM_ARGS:-} >"$OUT/vllm.log" 2>&1 &
VLLM_PID=$!
trap 'kill "$VLLM_PID" 2>/dev/null || true; wait "$VLLM_PID" 2>/dev/null || true' EXIT

URL="http://127.0.0.1:$PORT/v1"
for _ in $(seq 1 300); do
    if curl -sf "$URL/models" >/dev/null; then
        break
    fi
    if ! kill -0 "$VLLM_PID" 2>/dev/null; then
        echo "vllm serve exited; see $OUT/vllm.log" >&2
        tail -n 30 "$OUT/vllm.log" >&2
        exit 1
    fi
    sleep 2
done
curl -sf "$URL/models" >/dev/null || { echo "vllm serve did not come up in 600 s" >&2; exit 1; }

status=0
LMQL_LITE_SERVED_URL="$URL" python -m pytest -q -p no:cacheprovider tests/model/test_served.py \
    2>&1 | tee "$OUT/checks.txt" || status=1
python bench/serve.py --url "$URL" --local none --json >"$OUT/serve.json" || status=1
python bench/serve.py --url "$URL" --local none | tee "$OUT/serve.txt" || status=1
exit "$status"

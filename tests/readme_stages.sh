#!/usr/bin/env bash
# Every command of the README's stage table, as written, right after `make demo` (about 32-64 min on 2 cores):
#
#     make demo && bash tests/readme_stages.sh        # one line per command: ok/FAIL, seconds; logs in runs/readme-stages/
#
# Not part of `make test` (it needs the demo's outputs and real training runs); its last result is in docs/demo.md.
set -u
cd "$(dirname "$0")/.."
PATH="$PWD/.venv/bin:$PATH"
LOGS=runs/readme-stages
mkdir -p "$LOGS"
failed=0

step() {  # step <name> <command...>
    local name=$1 start=$SECONDS
    shift
    if "$@" >"$LOGS/$name.log" 2>&1; then
        echo "ok    $name ($((SECONDS - start)) s): $*"
    else
        echo "FAIL  $name ($((SECONDS - start)) s): $* (see $LOGS/$name.log)"
        failed=$((failed + 1))
    fi
}

gated() {  # an eval whose gate refuses promotion exits 2 by design: that is a result, not a failure
    "$@"
    local rc=$?
    [ $rc -eq 2 ] && echo "(exit 2: the gate did not promote this version)"
    [ $rc -eq 0 ] || [ $rc -eq 2 ]
}

serve_check() {  # serve_check <config>: serve run, wait for /v1/models, print it, stop
    serve run "$1" &
    local pid=$! body=""
    for _ in $(seq 120); do
        body=$(curl -sf http://127.0.0.1:8000/v1/models) && break
        kill -0 $pid 2>/dev/null || break
        sleep 2
    done
    kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null  # (SIGINT is ignored by a background job of a script)
    ray stop --force >/dev/null 2>&1
    echo "$body"
    [ -n "$body" ]
}

[ -e runs/pipeline-demo/sft ] || { echo "run make demo first (runs/pipeline-demo/sft is missing)"; exit 1; }
step demo_data  python -m jobs.demo_data
step data       python -m jobs.data jobs/configs/data_demo.yaml
step data_prefs python -m jobs.data jobs/configs/data_prefs_demo.yaml
step sft        python -m jobs.sft jobs/configs/sft_demo.yaml
step eval       gated python -m jobs.eval jobs/configs/eval_demo.yaml model=runs/pipeline-demo/sft/final
step registry   python -m jobs.registry list
step generate   python -m jobs.generate model=registry:latest-promoted prompt="How do I return an order?"
step serve      serve_check serve_configs/demo.yaml
step serve_demo python -m jobs.serve_demo
step quantize   python -m jobs.quantize model=registry:latest-promoted
step serve_int8 serve_check serve_configs/int8.yaml
step export     python -m jobs.export format=onnx model=registry:latest-promoted
step serve_onnx serve_check serve_configs/onnx.yaml
step sweep      python -m jobs.sweep jobs/configs/sweep_demo.yaml
step reward     python -m jobs.reward jobs/configs/reward_demo.yaml
step ppo        python -m jobs.ppo jobs/configs/ppo_demo.yaml
step grpo       python -m jobs.grpo jobs/configs/grpo_demo.yaml
step dpo        python -m jobs.dpo jobs/configs/dpo_demo.yaml
step pipeline   python -m jobs.pipeline jobs/configs/demo.yaml
echo "$failed failed"
exit $((failed > 0))

#!/usr/bin/env bash
# The first hour on a lent GPU (or a TPU VM), in one command that finishes in under 8 minutes:
#
#   scripts/accelerator_check.sh --out accelerator_check.json            # on the accelerator machine
#   scripts/accelerator_check.sh --toy --out /tmp/check.json             # the same steps at toy size on a CPU (CI)
#
# Steps, each under its own time limit, each recorded (status, seconds, figures, last lines of output) in one JSON:
#   1. install   pip install -e '.[cuda12]' (or --extra tpu); skipped with --toy or --no-install
#   2. backend   JAX version, backend, devices, each device's memory limit
#   3. smoke     2 PPO iterations of the GSM8K NTL config at full Qwen2.5-0.5B shapes on random weights
#                (scripts/smoke_real_shapes.py): per-phase times, the sampler's among them, tokens/s, peak memory
#   4. plan      scripts/plan_memory.py on this machine's own compiler (--backend native), against the device's
#                memory limit as JAX reports it (XLA's default preallocation of 75% of the card included)
#   5. suite     benchmarks/gpu_suite.py (rollout, train step and NTL overhead against PyTorch where CUDA is there)
# The JSON is rewritten after every step, so a run cut short still leaves what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

OUT=accelerator_check.json
EXTRA=cuda12
TOY=0
INSTALL=1
PYTHON=${PYTHON:-python}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --extra) EXTRA=$2; shift 2 ;;
    --toy) TOY=1; INSTALL=0; shift ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown argument $1; allowed: --out FILE, --extra cuda12|tpu, --toy, --no-install" ;;
  esac
done
[[ $EXTRA == cuda12 || $EXTRA == tpu ]] || die "--extra=$EXTRA is invalid; allowed: cuda12, tpu"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/accelerator_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if [[ $TOY == 1 ]]; then
  PLATFORM=any
  SMOKE_ARGS=(--layers 2 --hidden 64 --vocab 4096 --prompts 8 --prompt_length 256 --response_length 16)
  PLAN_ARGS=(--gin_bindings "ntl_jax.TrainerConfig.platform = 'any'" --gin_bindings "MAX_RESPONSE_LENGTH = 16"
             --gin_bindings "ntl_jax.PPOConfig.max_prompt_length = 64"
             --gin_bindings "ntl_jax.PPOConfig.train_batch_size = 8"
             --gin_bindings "ntl_jax.PPOConfig.ppo_mini_batch_size = 8"
             --gin_bindings "ntl_jax.PPOConfig.log_prob_micro_batch_size_per_device = 8")
  SUITE_ARGS=(--smoke)
  LIMITS=(60 300 300 300)
  # Qwen2.5-0.5B's config, shrunk like the smoke model: the plan runs the same code at toy size.
  MODEL_CONFIG="$WORK/toy_config.json"
  "$PYTHON" - "$MODEL_CONFIG" <<'PY'
import json, sys
config = json.load(open("configs/models/qwen2.5-0.5b-instruct.json"))
config.update(num_hidden_layers=2, hidden_size=64, intermediate_size=256, num_attention_heads=2,
              num_key_value_heads=1, vocab_size=4096)
json.dump(config, open(sys.argv[1], "w"))
PY
else
  PLATFORM=accelerator
  SMOKE_ARGS=(--prompts 8 --prompt_length 256 --response_length 64)
  PLAN_ARGS=()
  SUITE_ARGS=(--budget-s 150)
  LIMITS=(60 150 90 180)
  MODEL_CONFIG=configs/models/qwen2.5-0.5b-instruct.json
fi

record() {  # record NAME STATUS SECONDS LOGFILE [FIGURES_JSON]
  "$PYTHON" - "$OUT" "$@" <<'PY'
import json, os, sys
out, name, status, seconds, log = sys.argv[1:6]
figures = sys.argv[6] if len(sys.argv) > 6 else ""
report = json.load(open(out)) if os.path.isfile(out) else {"steps": {}}
tail = open(log, errors="replace").read()[-3000:] if os.path.isfile(log) else ""
step = {"status": status, "seconds": round(float(seconds), 1), "output_tail": tail}
if figures and os.path.isfile(figures):
    step["figures"] = json.load(open(figures))
report["steps"][name] = step
json.dump(report, open(out, "w"), indent=2)
PY
}

run_step() {  # run_step NAME LIMIT_S FIGURES_JSON COMMAND...
  local name=$1 limit=$2 figures=$3; shift 3
  local output="$WORK/$name.log" start status
  log "[$name] $*"
  start=$SECONDS
  if timeout "$limit" "$@" >"$output" 2>&1; then status=ok; else status="failed (exit $?)"; fi
  [[ $status == "failed (exit 124)" ]] && status="timed out after ${limit} s"
  record "$name" "$status" "$((SECONDS - start))" "$output" "$figures"
  log "[$name] $status"
}

rm -f "$OUT"
if [[ $INSTALL == 1 ]]; then
  run_step install 300 "" "$PYTHON" -m pip install -q -e ".[$EXTRA]"
fi
cat >"$WORK/backend.py" <<'PY'
import json, sys
import jax
devices = jax.devices()
info = {"jax": jax.__version__, "backend": jax.default_backend(), "device_count": len(devices),
        "devices": [str(d) for d in devices],
        "memory_limit_gib": [((d.memory_stats() or {}).get("bytes_limit", 0)) / 2**30 for d in devices]}
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info))
PY
run_step backend "${LIMITS[0]}" "$WORK/backend.json" "$PYTHON" "$WORK/backend.py" "$WORK/backend.json"
run_step smoke "${LIMITS[1]}" "$WORK/smoke.json" "$PYTHON" scripts/smoke_real_shapes.py --iterations 2 \
  --platform "$PLATFORM" --json "$WORK/smoke.json" "${SMOKE_ARGS[@]}"

# The plan's limit: the first device's memory limit as JAX reports it (0 on a CPU: no limit).
LIMIT_GIB=$("$PYTHON" -c "import json,sys; v=json.load(open(sys.argv[1]))['memory_limit_gib']; print(v[0] if v else 0)" \
  "$WORK/backend.json" 2>/dev/null || echo 0)
PLAN_LIMIT=()
[[ $LIMIT_GIB != 0 && $LIMIT_GIB != 0.0 ]] && PLAN_LIMIT=(--limit_gib "$LIMIT_GIB")
run_step plan "${LIMITS[2]}" "$WORK/plan.json" env JAX_PLATFORMS= "$PYTHON" scripts/plan_memory.py \
  --gin_file=configs/gsm8k_qwen2_5_0_5b_ntl_final.gin --model_config="$MODEL_CONFIG" \
  --devices=1 --backend=native --json "$WORK/plan.json" "${PLAN_LIMIT[@]}" "${PLAN_ARGS[@]}"
run_step suite "${LIMITS[3]}" "$WORK/suite.json" "$PYTHON" -m benchmarks.gpu_suite --json "$WORK/suite.json" \
  "${SUITE_ARGS[@]}"

"$PYTHON" - "$OUT" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for name, step in report["steps"].items():
    print(f"{name:8s} {step['status']:28s} {step['seconds']:7.1f} s")
PY
log "report: $OUT"

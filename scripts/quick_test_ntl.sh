#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Smoke test of both NTL modes on the embedded default (tiny decoder, character tokenizer, generated arithmetic):
# configs/ntl_final.gin then configs/ntl_all.gin with a short warm start and a few PPO steps. About 2-4 minutes on
# 2 CPU cores, no downloads. The second mode reuses the first one's warm-started policy (same task and warm-start
# settings, so the cache key in <run>/warm_start/warm_start.json matches). Each run must log ntl/loss.
#
#   scripts/quick_test_ntl.sh [--output_dir DIR] [--steps N] [--dry_run]
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=common.sh
source "${REPO_ROOT}/scripts/common.sh"

usage() {
  cat <<EOF
usage: $(basename "$0") [options] [-- extra ntl_jax.train flags for both runs]

  --output_dir DIR   parent of the two run directories (default outputs/quick_test_ntl; existing runs resume)
  --steps N          PPO steps per mode (default 4)
  --python BIN       Python with ntl_jax installed (env PYTHON; default python)
  --dry_run          print the commands and exit
  -h, --help         this help
EOF
}

OUTPUT_DIR="outputs/quick_test_ntl"
STEPS=4
PYTHON="${PYTHON:-python}"
EXTRA_ARGS=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --output_dir) need_value "$1" "$#"; OUTPUT_DIR="$2"; shift 2 ;;
    --steps) need_value "$1" "$#"; STEPS="$2"; shift 2 ;;
    --python) need_value "$1" "$#"; PYTHON="$2"; shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA_ARGS=("$@"); break ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
done
[[ "${STEPS}" =~ ^[1-9][0-9]*$ ]] || die "--steps=${STEPS} is invalid; allowed: a positive integer"
OUTPUT_DIR="$(abspath "${OUTPUT_DIR}")"
cd "${REPO_ROOT}"

# Shrink the embedded default: smaller task and warm start, a batch of 16 prompts x 8 samples, validation on
# 64 held-out problems at the end only. The warm start stops at max_steps: its accuracy is low, which is fine
# for a smoke test of the NTL plumbing (targets, ntl_info in rewards, NTL term in the actor loss, metrics).
QUICK_BINDINGS=(
  "ntl_jax.EmbeddedTaskConfig.num_train=2000"
  "ntl_jax.EmbeddedTaskConfig.num_val=64"
  "ntl_jax.WarmStartConfig.max_steps=150"
  "ntl_jax.WarmStartConfig.eval_every=75"
  "ntl_jax.WarmStartConfig.eval_samples=64"
  "ntl_jax.PPOConfig.train_batch_size=16"
  "ntl_jax.PPOConfig.ppo_mini_batch_size=8"
  "ntl_jax.PPOConfig.ppo_micro_batch_size=64"
  "ntl_jax.TrainerConfig.total_training_steps=${STEPS}"
  "ntl_jax.TrainerConfig.test_freq=${STEPS}"
  "ntl_jax.TrainerConfig.save_freq=${STEPS}"
  "ntl_jax.TrainerConfig.use_tensorboard=False"
  "ntl_jax.TrainerConfig.progress_bar=False"
)

train_mode() {
  local mode="$1" cmd binding
  cmd=("${PYTHON}" -m ntl_jax.train "--gin_file=configs/${mode}.gin" "--output_dir=${OUTPUT_DIR}/${mode}")
  for binding in "${QUICK_BINDINGS[@]}"; do
    cmd+=("--gin_bindings=${binding}")
  done
  cmd+=("${EXTRA_ARGS[@]}")
  log "training ${mode} (${STEPS} PPO steps) in ${OUTPUT_DIR}/${mode}"
  run "${cmd[@]}"
  if [[ "${DRY_RUN}" != 1 ]] && ! grep -q '"ntl/loss"' "${OUTPUT_DIR}/${mode}/metrics.jsonl"; then
    die "${OUTPUT_DIR}/${mode}/metrics.jsonl has no ntl/loss: NTL did not run"
  fi
}

SECONDS=0
train_mode ntl_final
if [[ "${DRY_RUN}" == 1 || ! -d "${OUTPUT_DIR}/ntl_all/warm_start" ]]; then
  run mkdir -p "${OUTPUT_DIR}/ntl_all"
  run cp -r "${OUTPUT_DIR}/ntl_final/warm_start" "${OUTPUT_DIR}/ntl_all/warm_start"
fi
train_mode ntl_all
[[ "${DRY_RUN}" == 1 ]] || log "both NTL modes ran in ${SECONDS} s; metrics in ${OUTPUT_DIR}/{ntl_final,ntl_all}/metrics.jsonl"

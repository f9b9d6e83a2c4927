#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Train Qwen2.5-0.5B-Instruct on GSM8K with PPO (standard, NTL final-answer or NTL all-tokens) on this machine.
# Prepares data/gsm8k/{train,test}.parquet first when they are missing. The per-mode scripts
# train_gsm8k_qwen_ppo_{standard,ntl_final_answer,ntl_all}.sh call this one with --mode.
#
#   scripts/train_gsm8k_qwen_ppo.sh --mode ntl_final --model_path models/Qwen2.5-0.5B-Instruct
#   MODEL_PATH=/ckpt/qwen scripts/train_gsm8k_qwen_ppo.sh --mode standard -- --gin_bindings="ntl_jax.TrainerConfig.use_wandb=True"
#
# Multi-host GPU clusters: scripts/launch_gpu.sh; TPU pods: scripts/launch_tpu_pod.sh.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=common.sh
source "${REPO_ROOT}/scripts/common.sh"

usage() {
  cat <<EOF
usage: $(basename "$0") --mode standard|ntl_final|ntl_all [options] [-- extra ntl_jax.train flags]

  --mode MODE            which config: configs/gsm8k_qwen2_5_0_5b_<MODE>.gin
  --model_path DIR       local HF folder of the policy (env MODEL_PATH; default models/Qwen2.5-0.5B-Instruct)
  --data_dir DIR         verl parquet folder (env DATA_DIR; default data/gsm8k); prepared when files are missing
  --raw_gsm8k_dir DIR    raw GSM8K train.jsonl/test.jsonl for the preparation (env GSM8K_RAW_DIR; default
                         ../shared/data/gsm8k when it exists, else the openai/gsm8k dataset, which needs network)
  --output_dir DIR       run directory (env OUTPUT_DIR; default: the config's outputs/gsm8k_qwen2_5_0_5b_<MODE>)
  --micro_batch_size N   PPO micro-batch in responses per device, as verl's ppo_micro_batch_size_per_gpu
                         (env PPO_MICRO_BATCH_SIZE_PER_DEVICE; default the config's 4, valid on 1, 8 or 16 devices)
  --python BIN           Python with ntl_jax installed (env PYTHON; default python)
  --dry_run              print the commands and exit
  -h, --help             this help
EOF
}

MODE=""
MODEL_PATH="${MODEL_PATH:-}"
DATA_DIR="${DATA_DIR:-}"
GSM8K_RAW_DIR="${GSM8K_RAW_DIR:-}"
OUTPUT_DIR="${OUTPUT_DIR:-}"
MICRO_BATCH_SIZE="${PPO_MICRO_BATCH_SIZE_PER_DEVICE:-}"
PYTHON="${PYTHON:-python}"
EXTRA_ARGS=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --mode) need_value "$1" "$#"; MODE="$2"; shift 2 ;;
    --model_path) need_value "$1" "$#"; MODEL_PATH="$2"; shift 2 ;;
    --data_dir) need_value "$1" "$#"; DATA_DIR="$2"; shift 2 ;;
    --raw_gsm8k_dir) need_value "$1" "$#"; GSM8K_RAW_DIR="$2"; shift 2 ;;
    --output_dir) need_value "$1" "$#"; OUTPUT_DIR="$2"; shift 2 ;;
    --micro_batch_size) need_value "$1" "$#"; MICRO_BATCH_SIZE="$2"; shift 2 ;;
    --python) need_value "$1" "$#"; PYTHON="$2"; shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA_ARGS=("$@"); break ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
done

case "${MODE}" in
  standard | ntl_final | ntl_all) ;;
  *) die "--mode=${MODE} is invalid; allowed: standard, ntl_final, ntl_all" ;;
esac
if [[ -n "${MICRO_BATCH_SIZE}" && ! "${MICRO_BATCH_SIZE}" =~ ^[1-9][0-9]*$ ]]; then
  die "--micro_batch_size=${MICRO_BATCH_SIZE} is invalid; allowed: a positive integer (responses per device)"
fi

# User paths are relative to the caller's directory; defaults to the repository.
MODEL_PATH="$(abspath "${MODEL_PATH:-${REPO_ROOT}/models/Qwen2.5-0.5B-Instruct}")"
DATA_DIR="$(abspath "${DATA_DIR:-${REPO_ROOT}/data/gsm8k}")"
if [[ -z "${GSM8K_RAW_DIR}" && -d "${REPO_ROOT}/../shared/data/gsm8k" ]]; then
  GSM8K_RAW_DIR="$(cd "${REPO_ROOT}/../shared/data/gsm8k" && pwd)"
fi
[[ -z "${GSM8K_RAW_DIR}" ]] || GSM8K_RAW_DIR="$(abspath "${GSM8K_RAW_DIR}")"
[[ -z "${OUTPUT_DIR}" ]] || OUTPUT_DIR="$(abspath "${OUTPUT_DIR}")"
gin_string_ok "${MODEL_PATH}" --model_path
gin_string_ok "${DATA_DIR}" --data_dir
CONFIG="${REPO_ROOT}/configs/gsm8k_qwen2_5_0_5b_${MODE}.gin"

cd "${REPO_ROOT}"

if [[ ! -f "${DATA_DIR}/train.parquet" || ! -f "${DATA_DIR}/test.parquet" ]]; then
  if [[ -n "${GSM8K_RAW_DIR}" ]]; then
    run "${PYTHON}" scripts/prepare_gsm8k.py --input_dir "${GSM8K_RAW_DIR}" --output_dir "${DATA_DIR}"
  else
    run "${PYTHON}" scripts/prepare_gsm8k.py --hf_dataset openai/gsm8k --output_dir "${DATA_DIR}"
  fi
fi

if [[ "${DRY_RUN}" != 1 && ! -f "${MODEL_PATH}/config.json" ]]; then
  die "no config.json in --model_path=${MODEL_PATH}; download the model first, e.g.
  hf download Qwen/Qwen2.5-0.5B-Instruct --local-dir ${MODEL_PATH}"
fi

TRAIN_CMD=("${PYTHON}" -m ntl_jax.train
  "--gin_file=${CONFIG}"
  "--gin_bindings=MODEL_PATH='${MODEL_PATH}'"
  "--gin_bindings=TRAIN_FILES=('${DATA_DIR}/train.parquet',)"
  "--gin_bindings=VAL_FILES=('${DATA_DIR}/test.parquet',)")
[[ -z "${MICRO_BATCH_SIZE}" ]] || TRAIN_CMD+=("--gin_bindings=PPO_MICRO_BATCH_SIZE_PER_DEVICE=${MICRO_BATCH_SIZE}")
[[ -z "${OUTPUT_DIR}" ]] || TRAIN_CMD+=("--output_dir=${OUTPUT_DIR}")
TRAIN_CMD+=("${EXTRA_ARGS[@]}")

run "${TRAIN_CMD[@]}"

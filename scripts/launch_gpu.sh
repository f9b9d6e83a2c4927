#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Train on GPUs: one node, or several nodes with one JAX process per node (each process drives all GPUs of its
# node; jax.distributed joins them, see ntl_jax/distributed/multihost.py).
#
#   single node:      scripts/launch_gpu.sh --config configs/gsm8k_qwen2_5_0_5b_ntl_final.gin
#   one node of many: scripts/launch_gpu.sh --num_nodes 2 --node_rank 1 --coordinator_address node0:12355 ...
#                     (run on every node with its own --node_rank; rank 0's host is the coordinator)
#   all nodes by ssh: scripts/launch_gpu.sh --nodes node0,node1 ...   (starts rank i on the i-th host, waits)
#
# The process settings reach ntl_jax.train as NTL_JAX_COORDINATOR_ADDRESS / NTL_JAX_NUM_PROCESSES /
# NTL_JAX_PROCESS_ID (default) or as its --coordinator_address / --num_processes / --process_id flags (--use_flags).
# With --nodes every host needs this checkout at the same path (or --remote_repo_dir) with ntl-jax installed, the
# model and data at the paths the gin bindings name, and password-less ssh.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=common.sh
source "${REPO_ROOT}/scripts/common.sh"

usage() {
  cat <<EOF
usage: $(basename "$0") [options] [-- extra ntl_jax.train flags]

  --config FILE               gin config (default configs/gsm8k_qwen2_5_0_5b_ntl_final.gin)
  --model_path DIR            binds MODEL_PATH (env MODEL_PATH; default: the config's)
  --gin_bindings B            extra gin binding (repeatable)
  --output_dir DIR            run directory (default: the config's); with several nodes every process writes its
                              part of each checkpoint there: use a file system all nodes share
  --num_nodes N               number of nodes (= JAX processes; default 1)
  --node_rank R               this node's rank, 0..N-1 (needs --coordinator_address)
  --coordinator_address H:P   host:port of rank 0's coordinator service
  --nodes H0,H1,...           start rank i on host i by ssh (coordinator H0:--coordinator_port)
  --coordinator_port P        port for --nodes (default 12355)
  --remote_repo_dir DIR       checkout path on the --nodes hosts (default: this checkout's path)
  --use_flags                 pass the process settings as train flags instead of NTL_JAX_* variables
  --python BIN                Python with ntl_jax installed (env PYTHON; default python)
  --dry_run                   print the commands and exit
  -h, --help                  this help
EOF
}

CONFIG="configs/gsm8k_qwen2_5_0_5b_ntl_final.gin"
MODEL_PATH="${MODEL_PATH:-}"
OUTPUT_DIR=""
NUM_NODES=1
NODE_RANK=""
COORDINATOR=""
NODES=""
COORDINATOR_PORT=12355
REMOTE_REPO_DIR="${REPO_ROOT}"
USE_FLAGS=0
PYTHON="${PYTHON:-python}"
BINDINGS=()
EXTRA_ARGS=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) need_value "$1" "$#"; CONFIG="$2"; shift 2 ;;
    --model_path) need_value "$1" "$#"; MODEL_PATH="$2"; shift 2 ;;
    --gin_bindings) need_value "$1" "$#"; BINDINGS+=("$2"); shift 2 ;;
    --output_dir) need_value "$1" "$#"; OUTPUT_DIR="$2"; shift 2 ;;
    --num_nodes) need_value "$1" "$#"; NUM_NODES="$2"; shift 2 ;;
    --node_rank) need_value "$1" "$#"; NODE_RANK="$2"; shift 2 ;;
    --coordinator_address) need_value "$1" "$#"; COORDINATOR="$2"; shift 2 ;;
    --nodes) need_value "$1" "$#"; NODES="$2"; shift 2 ;;
    --coordinator_port) need_value "$1" "$#"; COORDINATOR_PORT="$2"; shift 2 ;;
    --remote_repo_dir) need_value "$1" "$#"; REMOTE_REPO_DIR="$2"; shift 2 ;;
    --use_flags) USE_FLAGS=1; shift ;;
    --python) need_value "$1" "$#"; PYTHON="$2"; shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA_ARGS=("$@"); break ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
done

[[ "${NUM_NODES}" =~ ^[1-9][0-9]*$ ]] || die "--num_nodes=${NUM_NODES} is invalid; allowed: a positive integer"
[[ "${COORDINATOR_PORT}" =~ ^[0-9]+$ ]] || die "--coordinator_port=${COORDINATOR_PORT} is invalid; allowed: 1..65535"
# Paths given relative to the caller's directory are made absolute (the command runs in the checkout).
[[ -z "${MODEL_PATH}" ]] || MODEL_PATH="$(abspath "${MODEL_PATH}")"
[[ -z "${OUTPUT_DIR}" ]] || OUTPUT_DIR="$(abspath "${OUTPUT_DIR}")"
cd "${REPO_ROOT}"
[[ -f "${CONFIG}" ]] || die "--config=${CONFIG} not found under ${REPO_ROOT}"

# The training command, without the process settings.
TRAIN=("${PYTHON}" -m ntl_jax.train "--gin_file=${CONFIG}")
if [[ -n "${MODEL_PATH}" ]]; then
  gin_string_ok "${MODEL_PATH}" --model_path
  TRAIN+=("--gin_bindings=MODEL_PATH='${MODEL_PATH}'")
fi
for binding in "${BINDINGS[@]}"; do
  TRAIN+=("--gin_bindings=${binding}")
done
[[ -z "${OUTPUT_DIR}" ]] || TRAIN+=("--output_dir=${OUTPUT_DIR}")
TRAIN+=("${EXTRA_ARGS[@]}")

# `process_command ADDRESS COUNT RANK`: the training command of one process, in PROCESS_CMD.
process_command() {
  if [[ "${USE_FLAGS}" == 1 ]]; then
    PROCESS_CMD=("${TRAIN[@]}" "--coordinator_address=$1" "--num_processes=$2" "--process_id=$3")
  else
    PROCESS_CMD=(env "NTL_JAX_COORDINATOR_ADDRESS=$1" "NTL_JAX_NUM_PROCESSES=$2" "NTL_JAX_PROCESS_ID=$3"
      "${TRAIN[@]}")
  fi
}

if [[ -n "${NODES}" ]]; then
  # Every node by ssh: rank i on the i-th host, all in parallel; fail if any fails.
  IFS=, read -r -a HOSTS <<<"${NODES}"
  [[ "${#HOSTS[@]}" -ge 1 && -n "${HOSTS[0]}" ]] || die "--nodes=${NODES} is invalid; allowed: host0,host1,..."
  require_tool ssh "install an ssh client or start each node with --node_rank"
  address="${HOSTS[0]}:${COORDINATOR_PORT}"
  for rank in "${!HOSTS[@]}"; do
    process_command "${address}" "${#HOSTS[@]}" "${rank}"
    run_bg ssh "${HOSTS[${rank}]}" "cd $(quote_word "${REMOTE_REPO_DIR}") && $(quote_cmd "${PROCESS_CMD[@]}")"
  done
  [[ "${DRY_RUN}" == 1 ]] || wait_bg
elif [[ "${NUM_NODES}" -gt 1 || -n "${NODE_RANK}" ]]; then
  # This node only.
  [[ -n "${COORDINATOR}" ]] || die "--num_nodes=${NUM_NODES} needs --coordinator_address host:port (rank 0's host)"
  [[ "${NODE_RANK}" =~ ^[0-9]+$ && "${NODE_RANK}" -lt "${NUM_NODES}" ]] ||
    die "--node_rank=${NODE_RANK} is invalid; allowed: 0..$((NUM_NODES - 1))"
  process_command "${COORDINATOR}" "${NUM_NODES}" "${NODE_RANK}"
  run "${PROCESS_CMD[@]}"
else
  run "${TRAIN[@]}"
fi

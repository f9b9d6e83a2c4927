#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Train on a Cloud TPU VM pod slice: create the slice (or reuse it), install ntl-jax on every worker, then run the
# training command on --worker=all. jax.distributed initialises itself on TPU pods (ntl_jax.distributed.multihost),
# so every worker runs the same command; process 0 writes metrics, all processes take part in checkpoints.
#
#   scripts/launch_tpu_pod.sh --tpu_name ntl-v4 --zone us-central2-b --accelerator_type v4-16 \
#       --config configs/gsm8k_qwen2_5_0_5b_ntl_final.gin [--dry_run]
#
# Needs the gcloud CLI (authenticated, with a default project or --project) except under --dry_run.
# Workers get Python 3.11 through uv (TPU VM images ship Python 3.10, ntl-jax needs >= 3.11), jax[tpu],
# ntl-jax from this checkout (--source local, default) or a git URL (--source git), GSM8K from the openai/gsm8k
# dataset and the model from the Hugging Face Hub (workers need internet access for both).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=common.sh
source "${REPO_ROOT}/scripts/common.sh"

usage() {
  cat <<EOF
usage: $(basename "$0") --tpu_name NAME --zone ZONE [options] [-- extra ntl_jax.train flags]

  --tpu_name NAME          TPU VM name (env TPU_NAME)
  --zone ZONE              e.g. us-central2-b (env ZONE)
  --project ID             GCP project (env PROJECT; default: gcloud's configured project)
  --accelerator_type TYPE  e.g. v4-16, v5litepod-16, v5p-16 (default v4-16)
  --runtime_version V      TPU VM software version (default tpu-ubuntu2204-base for v4; v5e: v2-alpha-tpuv5-lite,
                           v5p: v2-alpha-tpuv5)
  --spot                   create a Spot slice (preemptible; training resumes from the newest checkpoint)
  --source local|git       install this checkout (tarball copied to every worker; default) or --git_url
  --git_url URL            pip-installable git URL for --source git (env NTL_JAX_GIT_URL)
  --hf_model ID            model downloaded on every worker (default Qwen/Qwen2.5-0.5B-Instruct)
  --config FILE            gin config, relative to the repository (default configs/gsm8k_qwen2_5_0_5b_ntl_final.gin)
  --gin_bindings B         extra gin binding for the run (repeatable)
  --output_dir DIR         run directory on the workers (default outputs/<config name> in the checkout): metrics
  --checkpoint_dir DIR     checkpoint folder every worker sees, e.g. gs://BUCKET/run (installs gcsfs) or an NFS
                           mount; required: each worker's own disk cannot resume a pod (and a recreated --spot
                           slice has empty disks)
  --allow_local_checkpoints  checkpoint to each worker's <output_dir>/checkpoints anyway (no --spot; resume only on
                           the same workers)
  --skip_create            do not create the slice (it must exist)
  --skip_install           do not install (already done)
  --background             run training under nohup (log in ~/ntl-jax-train.log on each worker) and return
  --dry_run                print the commands and exit (no gcloud needed)
  -h, --help               this help
EOF
}

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="v4-16"
RUNTIME_VERSION="tpu-ubuntu2204-base"
SPOT=0
SOURCE="local"
GIT_URL="${NTL_JAX_GIT_URL:-}"
HF_MODEL="Qwen/Qwen2.5-0.5B-Instruct"
CONFIG="configs/gsm8k_qwen2_5_0_5b_ntl_final.gin"
OUTPUT_DIR=""
CHECKPOINT_DIR=""
ALLOW_LOCAL_CHECKPOINTS=0
SKIP_CREATE=0
SKIP_INSTALL=0
BACKGROUND=0
BINDINGS=()
EXTRA_ARGS=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu_name) need_value "$1" "$#"; TPU_NAME="$2"; shift 2 ;;
    --zone) need_value "$1" "$#"; ZONE="$2"; shift 2 ;;
    --project) need_value "$1" "$#"; PROJECT="$2"; shift 2 ;;
    --accelerator_type) need_value "$1" "$#"; ACCELERATOR_TYPE="$2"; shift 2 ;;
    --runtime_version) need_value "$1" "$#"; RUNTIME_VERSION="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --source) need_value "$1" "$#"; SOURCE="$2"; shift 2 ;;
    --git_url) need_value "$1" "$#"; GIT_URL="$2"; shift 2 ;;
    --hf_model) need_value "$1" "$#"; HF_MODEL="$2"; shift 2 ;;
    --config) need_value "$1" "$#"; CONFIG="$2"; shift 2 ;;
    --gin_bindings) need_value "$1" "$#"; BINDINGS+=("$2"); shift 2 ;;
    --output_dir) need_value "$1" "$#"; OUTPUT_DIR="$2"; shift 2 ;;
    --checkpoint_dir) need_value "$1" "$#"; CHECKPOINT_DIR="$2"; shift 2 ;;
    --allow_local_checkpoints) ALLOW_LOCAL_CHECKPOINTS=1; shift ;;
    --skip_create) SKIP_CREATE=1; shift ;;
    --skip_install) SKIP_INSTALL=1; shift ;;
    --background) BACKGROUND=1; shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA_ARGS=("$@"); break ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
done

[[ -n "${TPU_NAME}" ]] || die "--tpu_name is required"
[[ -n "${ZONE}" ]] || die "--zone is required"
case "${SOURCE}" in
  local) ;;
  git) [[ -n "${GIT_URL}" ]] || die "--source git needs --git_url (or NTL_JAX_GIT_URL)" ;;
  *) die "--source=${SOURCE} is invalid; allowed: local, git" ;;
esac
[[ -f "${REPO_ROOT}/${CONFIG}" ]] || die "--config=${CONFIG} not found under ${REPO_ROOT}"
if [[ -z "${CHECKPOINT_DIR}" ]]; then
  [[ "${ALLOW_LOCAL_CHECKPOINTS}" == 1 ]] || die "--checkpoint_dir is required: a pod's workers have separate disks; \
allowed: gs://BUCKET/PATH or a folder every worker mounts, or --allow_local_checkpoints"
  [[ "${SPOT}" != 1 ]] || die "--spot with --allow_local_checkpoints cannot resume (a recreated slice has empty disks); \
allowed: --checkpoint_dir gs://BUCKET/PATH"
fi
require_tool gcloud "install the Google Cloud CLI (https://cloud.google.com/sdk) or use --dry_run"

CONFIG_NAME="$(basename "${CONFIG}" .gin)"
# Paths on the workers. The run command works inside the checkout, so its paths are relative to it and need no
# shell expansion on the worker; only the set-up script uses $HOME.
REMOTE_REPO="\$HOME/ntl-jax"
REMOTE_PY="\$HOME/ntl-jax-venv/bin/python"
MODEL_DIR="models/$(basename "${HF_MODEL}")"
OUTPUT_DIR="${OUTPUT_DIR:-outputs/${CONFIG_NAME}}"
TARBALL="/tmp/ntl-jax-src-${TPU_NAME}.tar.gz"
GCSFS=""
[[ "${CHECKPOINT_DIR}" != gs://* ]] || GCSFS="gcsfs"  # etils.epath opens gs:// through gcsfs

GCLOUD_TPU=(gcloud compute tpus tpu-vm)
SCOPE=("--zone=${ZONE}")
[[ -z "${PROJECT}" ]] || SCOPE+=("--project=${PROJECT}")

# `on_all_workers SCRIPT`: run a shell script on every worker of the slice.
on_all_workers() {
  run "${GCLOUD_TPU[@]}" ssh "${TPU_NAME}" "${SCOPE[@]}" --worker=all --command="$1"
}

# 1. Create the slice unless it exists.
if [[ "${SKIP_CREATE}" != 1 ]]; then
  CREATE=("${GCLOUD_TPU[@]}" create "${TPU_NAME}" "${SCOPE[@]}" "--accelerator-type=${ACCELERATOR_TYPE}"
    "--version=${RUNTIME_VERSION}")
  [[ "${SPOT}" != 1 ]] || CREATE+=(--spot)
  if [[ "${DRY_RUN}" == 1 ]]; then
    printf '# create the slice only if this fails:\n'
    run "${GCLOUD_TPU[@]}" describe "${TPU_NAME}" "${SCOPE[@]}"
    run "${CREATE[@]}"
  elif "${GCLOUD_TPU[@]}" describe "${TPU_NAME}" "${SCOPE[@]}" >/dev/null 2>&1; then
    log "reusing TPU VM ${TPU_NAME} in ${ZONE}"
  else
    run "${CREATE[@]}"
  fi
fi

# 2. Install on every worker: uv + Python 3.11 venv, ntl-jax with jax[tpu], the data and the model.
if [[ "${SKIP_INSTALL}" != 1 ]]; then
  if [[ "${SOURCE}" == local ]]; then
    run tar -C "${REPO_ROOT}" -czf "${TARBALL}" --exclude=./.git --exclude=./.venv --exclude=./outputs \
      --exclude=./data --exclude=./models --exclude='*.egg-info' --exclude='__pycache__' .
    run "${GCLOUD_TPU[@]}" scp "${TARBALL}" "${TPU_NAME}:/tmp/ntl-jax-src.tar.gz" "${SCOPE[@]}" --worker=all
    PACKAGE="-e ${REMOTE_REPO}"
    FETCH="mkdir -p ${REMOTE_REPO} && tar -xzf /tmp/ntl-jax-src.tar.gz -C ${REMOTE_REPO}"
  else
    PACKAGE="git+${GIT_URL}"
    FETCH="rm -rf ${REMOTE_REPO} && git clone --depth 1 ${GIT_URL} ${REMOTE_REPO}"
  fi
  INSTALL="set -euo pipefail; ${FETCH}; \
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh; export PATH=\$HOME/.local/bin:\$PATH; \
uv venv --allow-existing --python 3.11 \$HOME/ntl-jax-venv; \
uv pip install --python ${REMOTE_PY} 'jax[tpu]' ${PACKAGE} datasets huggingface_hub ${GCSFS}; \
cd ${REMOTE_REPO} && ${REMOTE_PY} scripts/prepare_gsm8k.py --hf_dataset openai/gsm8k --output_dir ${REMOTE_REPO}/data/gsm8k; \
${REMOTE_PY} -c \"from huggingface_hub import snapshot_download; snapshot_download('${HF_MODEL}', local_dir='${REMOTE_REPO}/${MODEL_DIR}')\""
  on_all_workers "${INSTALL}"
fi

# 3. Train on every worker (same command; process ids come from the TPU runtime).
TRAIN=(../ntl-jax-venv/bin/python -m ntl_jax.train "--gin_file=${CONFIG}" "--gin_bindings=MODEL_PATH='${MODEL_DIR}'"
  "--gin_bindings=TRAIN_FILES=('data/gsm8k/train.parquet',)"
  "--gin_bindings=VAL_FILES=('data/gsm8k/test.parquet',)"
  "--output_dir=${OUTPUT_DIR}")
if [[ -n "${CHECKPOINT_DIR}" ]]; then
  TRAIN+=("--gin_bindings=ntl_jax.TrainerConfig.checkpoint_dir='${CHECKPOINT_DIR}'")
else
  TRAIN+=("--gin_bindings=ntl_jax.TrainerConfig.allow_unshared_checkpoint_dir=True")
fi
for binding in "${BINDINGS[@]}"; do
  TRAIN+=("--gin_bindings=${binding}")
done
TRAIN+=("${EXTRA_ARGS[@]}")
TRAIN_LINE="$(quote_cmd "${TRAIN[@]}")"
if [[ "${BACKGROUND}" == 1 ]]; then
  TRAIN_LINE="nohup ${TRAIN_LINE} > ../ntl-jax-train.log 2>&1 &"
fi
on_all_workers "cd ${REMOTE_REPO} && ${TRAIN_LINE}"

#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Start (or stop) a Ray cluster for ntl-jax's remote rollout and reward workers
# (TrainerConfig.rollout_mode = 'ray', TrainerConfig.reward_runner = 'ray').
#
#   on the head:        scripts/start_ray_cluster.sh --head [--num_cpus 16]
#   on each worker:     scripts/start_ray_cluster.sh --address head-host:6379 [--num_cpus 32]
#   all hosts by ssh:   scripts/start_ray_cluster.sh --hosts head-host,w1,w2   (first host is the head)
#   stop:               scripts/start_ray_cluster.sh --stop [--hosts ...]
#
# Then start training on the head host with RAY_ADDRESS=head-host:6379 in the environment, so the trainer's
# ray.init() joins this cluster instead of starting a private one, and bind e.g.
#   --gin_bindings="ntl_jax.TrainerConfig.reward_runner='ray'" --gin_bindings="ntl_jax.TrainerConfig.reward_num_workers=16"
# Usage statistics are off and token authentication is disabled (RAY_AUTH_MODE=disabled, what the trainer's own
# ray.init uses), so keep the cluster on a private network; set RAY_AUTH_MODE yourself to override.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=common.sh
source "${REPO_ROOT}/scripts/common.sh"

usage() {
  cat <<EOF
usage: $(basename "$0") (--head | --address HOST:PORT | --hosts H0,H1,... | --stop) [options]

  --head               start the head node here
  --address HOST:PORT  start a worker here that joins the head at HOST:PORT
  --hosts H0,H1,...    by ssh: head on H0, workers on the others (each host needs ray on its PATH)
  --stop               stop Ray here (or on every --hosts host)
  --port P             head port (default 6379)
  --num_cpus N         CPUs Ray may use on each node (default: all)
  --ray BIN            ray executable (env RAY; default ray)
  --dry_run            print the commands and exit (no ray needed)
  -h, --help           this help
EOF
}

ROLE=""
ADDRESS=""
HOSTS_ARG=""
PORT=6379
NUM_CPUS=""
RAY="${RAY:-ray}"

set_role() {
  [[ -z "${ROLE}" || "${ROLE}" == "$1" ]] || die "--${ROLE} and --$1 exclude each other"
  ROLE="$1"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --head) set_role head; shift ;;
    --address) need_value "$1" "$#"; set_role address; ADDRESS="$2"; shift 2 ;;
    --hosts) need_value "$1" "$#"; HOSTS_ARG="$2"; shift 2 ;;
    --stop) set_role stop; shift ;;
    --port) need_value "$1" "$#"; PORT="$2"; shift 2 ;;
    --num_cpus) need_value "$1" "$#"; NUM_CPUS="$2"; shift 2 ;;
    --ray) need_value "$1" "$#"; RAY="$2"; shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
done

[[ -n "${ROLE}" || -n "${HOSTS_ARG}" ]] || { usage >&2; die "one of --head, --address, --hosts, --stop is required"; }
[[ "${PORT}" =~ ^[0-9]+$ ]] || die "--port=${PORT} is invalid; allowed: 1..65535"
[[ -z "${NUM_CPUS}" || "${NUM_CPUS}" =~ ^[1-9][0-9]*$ ]] || die "--num_cpus=${NUM_CPUS} is invalid; allowed: a positive integer"
[[ "${ROLE}" != address || "${ADDRESS}" == *:* ]] || die "--address=${ADDRESS} is invalid; allowed: host:port"

# Environment of every ray command (exported for local runs, prefixed for ssh runs).
RAY_ENV=(RAY_USAGE_STATS_ENABLED=0 "RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}")
CPU_ARGS=()
[[ -z "${NUM_CPUS}" ]] || CPU_ARGS=("--num-cpus=${NUM_CPUS}")

head_cmd() { RAY_CMD=(env "${RAY_ENV[@]}" "${RAY}" start --head "--port=${PORT}" "${CPU_ARGS[@]}" --disable-usage-stats); }
worker_cmd() { RAY_CMD=(env "${RAY_ENV[@]}" "${RAY}" start "--address=$1" "${CPU_ARGS[@]}" --disable-usage-stats); }
stop_cmd() { RAY_CMD=(env "${RAY_ENV[@]}" "${RAY}" stop); }

if [[ -n "${HOSTS_ARG}" ]]; then
  IFS=, read -r -a HOSTS <<<"${HOSTS_ARG}"
  [[ "${#HOSTS[@]}" -ge 1 && -n "${HOSTS[0]}" ]] || die "--hosts=${HOSTS_ARG} is invalid; allowed: head,worker1,..."
  [[ "${ROLE}" == "" || "${ROLE}" == stop ]] || die "--hosts starts head and workers itself; drop --${ROLE}"
  require_tool ssh "install an ssh client or run this script on each host"
  for index in "${!HOSTS[@]}"; do
    if [[ "${ROLE}" == stop ]]; then
      stop_cmd
    elif [[ "${index}" == 0 ]]; then
      head_cmd
    else
      worker_cmd "${HOSTS[0]}:${PORT}"
    fi
    # The head must be up before workers join: run one host at a time.
    run ssh "${HOSTS[${index}]}" "$(quote_cmd "${RAY_CMD[@]}")"
  done
  HEAD_ADDRESS="${HOSTS[0]}:${PORT}"
else
  require_tool "${RAY}" "pip install ray (ntl-jax depends on it) or pass --ray"
  case "${ROLE}" in
    head) head_cmd ;;
    address) worker_cmd "${ADDRESS}" ;;
    stop) stop_cmd ;;
  esac
  run "${RAY_CMD[@]}"
  HEAD_ADDRESS="${ADDRESS:-${HOSTNAME}:${PORT}}"
fi

if [[ "${ROLE}" != stop ]]; then
  log "train on the head host with: RAY_ADDRESS=${HEAD_ADDRESS} python -m ntl_jax.train ... \
--gin_bindings=\"ntl_jax.TrainerConfig.reward_runner='ray'\""
fi

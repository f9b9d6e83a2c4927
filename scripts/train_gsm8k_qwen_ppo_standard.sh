#!/usr/bin/env bash
# GSM8K + Qwen2.5-0.5B-Instruct, standard PPO (GAE + critic, no NTL):
# configs/gsm8k_qwen2_5_0_5b_standard.gin. Prepares the data when missing, then trains on this machine.
#
#   MODEL_PATH=models/Qwen2.5-0.5B-Instruct scripts/train_gsm8k_qwen_ppo_standard.sh [--dry_run] [-- train flags]
#
# Options: see scripts/train_gsm8k_qwen_ppo.sh --help (all but --mode are passed through).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/train_gsm8k_qwen_ppo.sh" --mode standard "$@"

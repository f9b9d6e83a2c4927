#!/usr/bin/env bash
# GSM8K + Qwen2.5-0.5B-Instruct, PPO + NTL on the final-answer digits (reward 0.5*correct + 0.5*exp(-ntl/tau)):
# configs/gsm8k_qwen2_5_0_5b_ntl_final.gin. Prepares the data when missing, then trains on this machine.
#
#   MODEL_PATH=models/Qwen2.5-0.5B-Instruct scripts/train_gsm8k_qwen_ppo_ntl_final_answer.sh [--dry_run] [-- train flags]
#
# Options: see scripts/train_gsm8k_qwen_ppo.sh --help (all but --mode are passed through).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/train_gsm8k_qwen_ppo.sh" --mode ntl_final "$@"

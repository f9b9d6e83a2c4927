"""Number Token Loss core: digit tokens, losses, targets, NTLInfo, temperature schedules, NTLConfig (pure)."""

from ntl_jax.ntl.config import NTLConfig
from ntl_jax.ntl.digits import DigitTokenError, clear_digit_cache, digit_token_ids
from ntl_jax.ntl.info import NTLInfo, compute_ntl_info
from ntl_jax.ntl.losses import (digit_accuracy, digit_probs, ntl_loss, ntl_mse, ntl_number, ntl_per_position,
                                ntl_per_sequence, ntl_wasserstein)
from ntl_jax.ntl.safe_eval import safe_eval_arithmetic
from ntl_jax.ntl.schedules import parse_schedule
from ntl_jax.ntl.targets import build_batch_targets, build_targets

__all__ = [
    "NTLConfig", "DigitTokenError", "clear_digit_cache", "digit_token_ids", "NTLInfo", "compute_ntl_info",
    "digit_accuracy", "digit_probs", "ntl_loss", "ntl_mse", "ntl_number", "ntl_per_position", "ntl_per_sequence",
    "ntl_wasserstein", "safe_eval_arithmetic", "parse_schedule", "build_batch_targets", "build_targets",
]

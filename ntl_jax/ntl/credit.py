"""Digit credit: token-level credit at the digits NTL targets, added to the advantages (host side, numpy).

The NTL reward pays a whole response for how close its answer is; this instead credits each targeted digit token
for being right, compared with the same digit (same number, same place) of the other responses to its prompt:

    c[b, t]      = 1 if the digit token t of response b shows its target digit, else 0     (targeted tokens only)
    key(b, t)    = (group of b, number index, place)             number 0 = the final answer, k = k-th checked step
    baseline     = mean of c over the group's targeted tokens with that key
    credit[b, t] = weight[b, t] * (c[b, t] - baseline)           and 0 at every token without a target

The trainer adds ``NTLConfig.digit_credit * credit`` to the advantages after the estimator (GRPO, RLOO or GAE)
has run, never to the rewards. Why there:

- the credit moves only the choice of *which digit* to write at a targeted place: the tokens that decide to write
  a step or an answer at all get none of it, so padding a response with easy checked steps or hiding a wrong one
  earns nothing (in a reward, the critic or the sequence sum would hand it back to those tokens);
- at every key the group's credits sum to 0 (a place only one response of the group writes gets 0), so the credit
  adds no net push toward longer or shorter answers;
- a right digit is always credited above a wrong one at the same key, and a token whose text is not one digit
  (a merged multi-digit token, or no digit at all) counts as wrong: hedging spellings never pay.
"""
from __future__ import annotations

import chex
import numpy as np

from ntl_jax.ntl.digits import digit_value_of_tokens


def digit_credit(response_ids: np.ndarray, target_digits: np.ndarray, weights: np.ndarray, number_ids: np.ndarray,
                 places: np.ndarray, group_ids: np.ndarray, digit_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(credit, correct)``, both float32 [B, T] (module docstring); ``correct`` is ``c`` (0 where untargeted).

    ``target_digits`` is -1 and ``weights`` 0 where a token has no target; ``group_ids`` [B] names each response's
    prompt (responses of one prompt share it).
    """
    target_digits = np.asarray(target_digits)
    chex.assert_equal_shape([np.asarray(response_ids), target_digits, np.asarray(weights), np.asarray(number_ids),
                             np.asarray(places)])
    chex.assert_shape(np.asarray(group_ids), (target_digits.shape[0],))
    targeted = (target_digits >= 0) & (np.asarray(weights) > 0)
    written = digit_value_of_tokens(response_ids, digit_ids)
    correct = (targeted & (written == target_digits)).astype(np.float32)
    credit = np.zeros(target_digits.shape, np.float32)
    if not targeted.any():
        return credit, correct
    rows, cols = np.nonzero(targeted)
    keys = np.stack([np.asarray(group_ids)[rows], np.asarray(number_ids)[rows, cols], np.asarray(places)[rows, cols]],
                    axis=1)
    _, key_index = np.unique(keys, axis=0, return_inverse=True)
    key_index = key_index.reshape(-1)
    hits = correct[rows, cols]
    baseline = np.bincount(key_index, weights=hits) / np.bincount(key_index)
    credit[rows, cols] = np.asarray(weights, np.float32)[rows, cols] * (hits - baseline[key_index])
    return credit, correct

"""An example reward function: verl's ``custom_reward_function`` signature, loaded by file path and name.

    python -m ntl_jax.train --gin_file=configs/ntl_final.gin \
        --gin_bindings="ntl_jax.TrainerConfig.reward_fn_path = 'examples/my_reward.py'" \
        --gin_bindings="ntl_jax.TrainerConfig.reward_fn_name = 'compute_score'" \
        --gin_bindings="ntl_jax.TrainerConfig.reward_fn_kwargs = (('max_chars', 200),)"

The score is the data source's built-in verdict (1 right, 0 wrong) minus a small penalty for every character past
``max_chars``; a wrong answer stays below a right one whatever its length (the penalty is capped at 0.5). With NTL
on, ``kwargs`` also holds ``ntl_info`` (``NTLInfo.sample_view``) and ``tau``; here NTL's digit accuracy is only
logged (any key besides ``score`` becomes ``reward_extra/<key>/mean``), so it cannot be gamed.
"""
from ntl_jax.rewards.scoring import default_compute_score, normalize_reward_output


def compute_score(data_source, solution_str, ground_truth, extra_info=None, max_chars=300, **kwargs):
    correct, extras = normalize_reward_output(default_compute_score(data_source, solution_str, ground_truth))
    penalty = min(0.5, 0.001 * max(0, len(solution_str) - max_chars))
    out = {"score": correct - penalty if correct >= 1.0 else -penalty, "correct": correct, "length_penalty": penalty}
    ntl_info = kwargs.get("ntl_info")
    if ntl_info is not None:
        out["ntl_digit_accuracy"] = ntl_info["digit_accuracy"]
    return out

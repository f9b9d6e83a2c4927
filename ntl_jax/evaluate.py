"""Evaluate a model on held-out problems: greedy accuracy, pass@k, answer errors, digit accuracy.

    python -m ntl_jax.evaluate --model=PATH_OR_HUB_ID [--run_dir=RUN | --gin_file=CFG ... | --data=PARQUET]
                               [--n_samples=K --temperature=T] [--max_samples=N] [--output_json=F]

``--model`` is a Hugging Face folder (an exported run, a base model) or a Hub id (resolved through the Hub's local
cache). The problems and every generation setting come from ``--run_dir`` (the run's ``operative_config.gin``: its
own validation set, batch size and seed, so evaluating a run's exported final policy reproduces its last
validation), else from ``--gin_file`` / ``--gin_bindings``, else from the embedded default; ``--data`` replaces the
problems with a verl parquet file. Per problem, with the data source's scorer and its answer reader
(``ntl_jax.answers``):

    accuracy          the scorer's verdict on the greedy response (verl's ``val-core/<source>/acc``)
    answer MAE        mean of min(|answer - truth|, 1e6); an unanswered problem counts |truth|
    median abs error  the median of the same (a few far answers cannot move it)
    digit accuracy    place-value digit accuracy of the answer (``ntl_jax.rewards.arithmetic.digit_accuracy``)
    pass@k            with --n_samples n >= k sampled at --temperature: 1 - C(n - c, k) / C(n, k), c correct of n
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Any, Sequence

import numpy as np

# transformers announces "PyTorch was not found" at import: JAX users read it as a failure. It is advice only.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def answer_statistics(data_source: str, solution_str: str, ground_truth: str) -> dict[str, float]:
    """acc (the scorer), abs_error, digit_acc and answered for one response, read as its scorer reads it."""
    from fractions import Fraction

    from ntl_jax.answers import number_value, read_answer
    from ntl_jax.rewards.arithmetic import ABS_ERROR_CAP, digit_accuracy
    from ntl_jax.rewards.scoring import default_compute_score, normalize_reward_output

    score, extras = normalize_reward_output(default_compute_score(data_source, solution_str, ground_truth))
    truth = number_value(ground_truth)
    answer = read_answer(data_source, solution_str)
    readable = answer is not None and answer.value is not None and truth is not None
    if readable:
        error = min(abs(answer.value - truth), Fraction(ABS_ERROR_CAP))
        digits = digit_accuracy(answer.text.replace(",", ""), str(ground_truth).strip().replace(",", ""))
    else:
        error = min(abs(truth), Fraction(ABS_ERROR_CAP)) if truth is not None else Fraction(ABS_ERROR_CAP)
        digits = 0.0
    return {"acc": float(extras.get("acc", 1.0 if score >= 1.0 else 0.0)), "abs_error": float(error),
            "digit_acc": float(digits), "answered": float(readable)}


def summarize(records: list[dict[str, float]], sampled: list[list[float]] | None = None,
              temperature: float | None = None) -> dict[str, float]:
    """The table's metrics from per-problem greedy records (and per-problem sampled verdicts for pass@k)."""
    if not records:
        raise ValueError("no problems to evaluate")
    column = {key: np.asarray([r[key] for r in records]) for key in records[0]}
    out = {"problems": float(len(records)), "accuracy": float(column["acc"].mean()),
           "answer_mae": float(column["abs_error"].mean()),
           "median_abs_error": float(np.median(column["abs_error"])),
           "digit_accuracy": float(column["digit_acc"].mean()), "answered": float(column["answered"].mean())}
    if sampled:
        n = len(sampled[0])
        for k in sorted({1, n}):
            out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(sum(v)), k) for v in sampled]))
        out["sampled_accuracy"] = float(np.mean(sampled))
        out["temperature"] = float(temperature)
    return out


# ------------------------------------------------------------------------------------------------ set-up
@dataclasses.dataclass
class EvalSetup:
    config: Any  # ExperimentConfig
    rows: list[dict]
    data: str  # where the problems come from, for the report


def load_setup(run_dir: str | None, gin_files: Sequence[str], gin_bindings: Sequence[str],
               data: str | None) -> EvalSetup:
    """The experiment config (from the run or the gin files) and the problems it validates on (or ``data``)."""
    import gin

    from ntl_jax.gin_files import build_experiment, parse_gin

    gin.clear_config()
    if run_dir is not None:
        operative = os.path.join(run_dir, "operative_config.gin")
        if not os.path.isfile(operative):
            raise ValueError(f"--run_dir={run_dir!r} has no operative_config.gin; allowed: the output_dir of a run "
                             "started by python -m ntl_jax.train")
        gin_files = [operative]
    parse_gin(list(gin_files), list(gin_bindings))
    config = build_experiment()
    if data is not None:
        from ntl_jax.data.verl_parquet import load_verl_parquet
        return EvalSetup(config, load_verl_parquet(data), data)
    if config.trainer.model_path is None:
        from ntl_jax.embedded import EmbeddedTaskConfig, embedded_rows
        return EvalSetup(config, embedded_rows(EmbeddedTaskConfig())[1], "the embedded default's held-out problems")
    from ntl_jax.data.verl_parquet import load_verl_parquet
    if not config.trainer.val_files:
        raise ValueError("the config has no TrainerConfig.val_files; allowed: pass --data=PARQUET")
    rows = [row for path in config.trainer.val_files for row in load_verl_parquet(path)]
    return EvalSetup(config, rows, ", ".join(config.trainer.val_files))


def load_policy(model: str, config: Any):
    """(params on the run's mesh, graphdef, model config, tokenizer, mesh), loaded as the trainer loads a policy."""
    from flax import nnx

    from ntl_jax.distributed.mesh import make_mesh
    from ntl_jax.models.hf_io import from_pretrained
    from ntl_jax.models.hub import resolve_model_path
    from ntl_jax.models.sharding import LOGICAL_AXIS_RULES
    from ntl_jax.models.tokenizers import load_tokenizer
    from ntl_jax.ppo.state import DTYPES

    run = config.trainer
    folder = resolve_model_path(model)
    mesh = make_mesh(run.mesh_data, run.mesh_fsdp, run.mesh_tensor)
    module = from_pretrained(folder, dtype=DTYPES[run.dtype], param_dtype=DTYPES[run.param_dtype], mesh=mesh,
                             rules=LOGICAL_AXIS_RULES, attention=run.attention)
    graphdef, params = nnx.split(module)
    return params, graphdef, module.config, load_tokenizer(folder), mesh, folder


def evaluate_model(model: str, setup: EvalSetup, *, n_samples: int = 0, temperature: float = 1.0,
                   max_samples: int = 0, batch_size: int = 0) -> dict[str, Any]:
    """Greedy (and sampled) responses to the setup's problems, scored; returns the summary and the settings."""
    import jax

    from ntl_jax.models.config import generation_eos_token_ids, stop_token_ids
    from ntl_jax.models.sampler import Sampler, SamplingParams, resolve_cache_dtype
    from ntl_jax.ppo.evaluation import evaluate
    from ntl_jax.ppo.rollout import ColocatedRollout
    from ntl_jax.rewards.registry import RewardFnSpec
    from ntl_jax.rewards.workers import LocalRewardRunner

    if n_samples < 0 or not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"--n_samples={n_samples} --temperature={temperature}: allowed: n_samples >= 0 and a "
                         "finite temperature > 0")
    config, rows = setup.config, setup.rows[: max_samples or None]
    ppo, run = config.ppo, config.trainer
    params, graphdef, model_config, tokenizer, mesh, folder = load_policy(model, config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sampler = Sampler(graphdef, model_config, eos_token_ids=stop_token_ids(
                          tokenizer, model_config.eos_token_id, generation_eos_token_ids(folder)),
                      pad_token_id=pad_id, mesh=mesh, cache_dtype=resolve_cache_dtype(run.kv_cache_dtype, mesh.devices.flat[0].platform),
                      cpu_decode_matmuls=run.cpu_decode_matmuls)
    rollout = ColocatedRollout(sampler, ppo.rollout_max_rows)
    scorer = LocalRewardRunner(RewardFnSpec(), timeout_s=run.reward_timeout_s, fallback_score=0.0)
    common = dict(max_prompt_length=ppo.max_prompt_length, truncation=run.truncation,
                  filter_overlong_prompts=run.filter_overlong_prompts, batch_size=batch_size or run.val_batch_size,
                  seed=run.seed, pad_id=pad_id)
    greedy: list[tuple[dict, str]] = []
    validation = evaluate(rollout, params, rows, tokenizer, scorer, SamplingParams(
        max_new_tokens=ppo.max_response_length, temperature=1e-6, greedy=True, n=1), samples=greedy, **common)
    records = [answer_statistics(row.get("data_source", ""), text, str(row["reward_model"]["ground_truth"]))
               for row, text in greedy]
    sampled = None
    if n_samples:
        draws: list[tuple[dict, str]] = []
        evaluate(rollout, params, rows, tokenizer, scorer, SamplingParams(
            max_new_tokens=ppo.max_response_length, temperature=temperature, n=n_samples), samples=draws,
            n=n_samples, **common)
        verdicts = [answer_statistics(row.get("data_source", ""), text,
                                      str(row["reward_model"]["ground_truth"]))["acc"] for row, text in draws]
        sampled = [verdicts[i:i + n_samples] for i in range(0, len(verdicts), n_samples)]
    summary = summarize(records, sampled, temperature if n_samples else None)
    return {"model": model, "model_folder": folder, "data": setup.data, "backend": jax.default_backend(),
            **summary, "validation": validation}


def format_table(result: dict[str, Any]) -> str:
    names = {"accuracy": "greedy accuracy", "answer_mae": "answer MAE", "median_abs_error": "median absolute error",
             "digit_accuracy": "digit accuracy", "answered": "answered"}
    lines = [f"model: {result['model']}", f"data: {result['data']} ({int(result['problems'])} problems)",
             "| metric | value |", "| --- | --- |"]
    lines += [f"| {label} | {result[key]:.4f} |" for key, label in names.items()]
    for key in sorted(k for k in result if k.startswith("pass@")):
        lines.append(f"| {key} (T={result['temperature']:g}) | {result[key]:.4f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ntl_jax.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face folder or Hub id of the model to evaluate")
    parser.add_argument("--run_dir", help="a training run's output_dir: its validation set and settings")
    parser.add_argument("--gin_file", action="append", default=[], help="gin config(s) giving the data and settings")
    parser.add_argument("--gin_bindings", action="append", default=[], help="gin bindings applied after the config")
    parser.add_argument("--data", help="verl parquet file of problems (replaces the config's validation set)")
    parser.add_argument("--n_samples", type=int, default=0, help="sampled responses per problem for pass@k")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of those responses")
    parser.add_argument("--max_samples", type=int, default=0, help="evaluate only the first N problems (0: all)")
    parser.add_argument("--batch_size", type=int, default=0, help="problems per batch (0: val_batch_size)")
    parser.add_argument("--output_json", help="write the results to this JSON file too")
    return parser.parse_args(argv)


def run(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.run_dir and args.gin_file:
        sys.exit("error: --run_dir and --gin_file are exclusive; allowed: one of them")
    try:
        setup = load_setup(args.run_dir, args.gin_file, args.gin_bindings, args.data)
        result = evaluate_model(args.model, setup, n_samples=args.n_samples, temperature=args.temperature,
                                max_samples=args.max_samples, batch_size=args.batch_size)
    except ValueError as err:
        sys.exit(f"error: {str(err).strip().splitlines()[0]}")
    print(format_table(result), flush=True)
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    run()

#!/usr/bin/env python
"""Standard PPO vs PPO + NTL (final_answer, all_tokens) over K seeds on one config; table and learning curves.

    python scripts/compare_modes.py --gin_file configs/standard.gin --seeds 3 --output_dir outputs/compare
    python scripts/compare_modes.py --output_dir outputs/compare --report_only     # re-aggregate finished runs

Each (mode, seed) trains in ``<output_dir>/<mode>/seed_<seed>`` through ``ntl_jax.train`` (parse_gin,
build_experiment, run_experiment); a run whose result.json exists is not trained again. Modes are gin bindings on
top of the config: standard = no NTL and the plain scorer; ntl_final / ntl_all = NTL with reward_mode
'final_answer' / 'all_tokens' and the matching ``custom_ntl_*`` reward. The seed sets ``TrainerConfig.seed`` and
``WarmStartConfig.seed``; on the embedded default every mode of a seed starts from the same warm-started policy
(trained once, copied). The held-out set is the same for all runs.

Every reward goes through ``score_with_digit_accuracy`` (this file, loaded by path like a verl custom reward):
it returns the mode's reward unchanged and adds two answer metrics, which validation logs as
``val-aux/<source>/{digit_acc,abs_error}/mean@1``:

    digit_acc = (#answer digits equal to the true digit at the same place value) / (#true digits + #extra digits)
                (final answer found as NTL finds it, 'strict_then_last'; extra = digits at places the truth
                lacks, trailing fraction zeros excepted; no answer -> 0)
    abs_error = |answer - truth| capped at 1e6 (1e6 when there is no answer); the scorer's own value when it has one

Writes ``summary.md`` / ``summary.csv`` (held-out accuracy, answer MAE, digit accuracy at the last validation:
mean, std and range over seeds, plus accuracy before PPO), ``runs.csv`` (one row per run) and
``learning_curves.png`` (held-out accuracy, MAE, digit accuracy and training accuracy per PPO step: mean over
seeds with a min-max band). Needs matplotlib for the plot.
"""
from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import re
import shutil
import sys
from fractions import Fraction
from typing import Any

MODES = ("standard", "ntl_final", "ntl_all")
MODE_BINDINGS = {
    "standard": ("ntl_jax.ExperimentConfig.use_ntl_trainer = False", "ntl_jax.NTLConfig.enabled = False"),
    # The NTL modes use the shipped configs' settings (configs/ntl_final.gin, ntl_all.gin): weight 0.05 and the
    # multiplicative reward correct * exp(-ntl / tau).
    "ntl_final": ("ntl_jax.ExperimentConfig.use_ntl_trainer = True", "ntl_jax.NTLConfig.enabled = True",
                  "ntl_jax.NTLConfig.reward_mode = 'final_answer'", "ntl_jax.NTLConfig.weight = 0.05"),
    "ntl_all": ("ntl_jax.ExperimentConfig.use_ntl_trainer = True", "ntl_jax.NTLConfig.enabled = True",
                "ntl_jax.NTLConfig.reward_mode = 'all_tokens'", "ntl_jax.NTLConfig.weight = 0.05"),
}
REWARD_KWARGS = {"standard": "", "ntl_final": ", ('combination', 'multiply')",
                 "ntl_all": ", ('combination', 'multiply')"}
BASE_REWARD = {"standard": "compute_score", "ntl_final": "custom_ntl_final", "ntl_all": "custom_ntl_all"}
METRICS = {"acc": "held-out accuracy", "abs_error": "held-out answer MAE", "digit_acc": "held-out digit accuracy"}
# Held-out curves by validation key, then a training curve by metric name (the sampled responses' accuracy: the
# modes' rewards differ, their accuracy does not).
CURVES = (("acc", "held-out accuracy"), ("abs_error", "held-out answer MAE (log)"),
          ("digit_acc", "held-out digit accuracy"), ("reward_extra/acc/mean", "training accuracy (sampled)"))
ABS_ERROR_CAP = 1e6


# ------------------------------------------------------------------------------------------------ reward wrapper
def answer_digit_accuracy(solution_str: str, ground_truth: str) -> float:
    """Place-value digit accuracy of the response's final answer (formula in the module docstring)."""
    from ntl_jax.ntl.targets import align_digits, find_final_answer, ground_truth_digits

    int_digits, frac_digits = ground_truth_digits(ground_truth)
    span = find_final_answer(solution_str, "strict_then_last")
    if span is None:
        return 0.0
    positions, targets, has_true, _ = align_digits(span, int_digits, frac_digits)
    predicted = [ord(solution_str[int(p)]) - ord("0") for p in positions]
    is_fraction = [i >= len(span.int_positions) for i in range(len(positions))]
    correct = sum(int(p == t) for p, t, known in zip(predicted, targets, has_true) if known)
    # Digits at places the truth lacks are wrong, except trailing fraction zeros ('2.50' for 2.5).
    extra = sum(1 for p, known, frac in zip(predicted, has_true, is_fraction) if not known and not (frac and p == 0))
    return correct / (len(int_digits) + len(frac_digits) + extra)


def answer_abs_error(solution_str: str, ground_truth: str) -> float:
    """|final answer - truth| capped at ABS_ERROR_CAP; the cap when no number can be read."""
    from ntl_jax.ntl.targets import find_final_answer

    span = find_final_answer(solution_str, "strict_then_last")
    truth_text = str(ground_truth).rsplit("####", 1)[-1]
    try:
        truth = Fraction(re.sub(r"[\s,$]", "", truth_text))
        answer = Fraction(re.sub(r"[\s,$]", "", solution_str[span.start:span.end])) if span else None
    except (ValueError, ZeroDivisionError):
        return ABS_ERROR_CAP
    return ABS_ERROR_CAP if answer is None else float(min(abs(answer - truth), Fraction(int(ABS_ERROR_CAP))))


@functools.lru_cache(maxsize=None)
def _base_reward(name: str):
    from ntl_jax.rewards.registry import RewardFnSpec, load_reward_function

    return load_reward_function(RewardFnSpec(path=None, name=name))


def score_with_digit_accuracy(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None,
                              *, base_reward: str = "compute_score", **kwargs: Any) -> dict[str, Any]:
    """The built-in reward ``base_reward`` (score unchanged) plus ``digit_acc`` and ``abs_error`` extras."""
    from ntl_jax.rewards.registry import normalize_reward_output

    out = _base_reward(base_reward)(data_source=data_source, solution_str=solution_str, ground_truth=ground_truth,
                                    extra_info=extra_info, **kwargs)
    score, extras = normalize_reward_output(out)
    try:
        digit_acc = answer_digit_accuracy(solution_str, ground_truth)
        abs_error = answer_abs_error(solution_str, ground_truth)
    except ValueError:  # a ground truth that is no number: the metrics say "wrong", the reward stays as it is
        digit_acc, abs_error = 0.0, ABS_ERROR_CAP
    extras.setdefault("abs_error", abs_error)
    return {"score": score, **extras, "digit_acc": digit_acc}


# ------------------------------------------------------------------------------------------------ running
def run_bindings(mode: str, seed: int, steps: int | None) -> list[str]:
    """Gin bindings that turn the config into this (mode, seed) run."""
    bindings = list(MODE_BINDINGS[mode]) + [
        f"ntl_jax.TrainerConfig.reward_fn_path = '{os.path.abspath(__file__)}'",
        "ntl_jax.TrainerConfig.reward_fn_name = 'score_with_digit_accuracy'",
        f"ntl_jax.TrainerConfig.reward_fn_kwargs = (('base_reward', '{BASE_REWARD[mode]}'){REWARD_KWARGS[mode]},)",
        f"ntl_jax.TrainerConfig.seed = {seed}",
        f"ntl_jax.WarmStartConfig.seed = {seed}",
    ]
    if steps is not None:
        bindings.append(f"ntl_jax.TrainerConfig.total_training_steps = {steps}")
    return bindings


def run_dir(output_dir: str, mode: str, seed: int) -> str:
    return os.path.join(output_dir, mode, f"seed_{seed}")


def train_one(gin_files: list[str], bindings: list[str], out_dir: str) -> None:
    import gin

    from ntl_jax.train import build_experiment, parse_gin, run_experiment

    gin.clear_config()
    parse_gin(gin_files, bindings)
    run_experiment(build_experiment(out_dir))
    gin.clear_config()


def share_warm_start(output_dir: str, modes: list[str], seed: int) -> None:
    """Copy the first mode's warm start to the other modes of this seed (embedded default only; same cache key)."""
    source = os.path.join(run_dir(output_dir, modes[0], seed), "warm_start")
    if not os.path.isdir(source):
        return
    for mode in modes[1:]:
        target = os.path.join(run_dir(output_dir, mode, seed), "warm_start")
        if not os.path.exists(target):
            shutil.copytree(source, target)


def train_all(gin_files: list[str], extra_bindings: list[str], modes: list[str], seeds: list[int],
              output_dir: str, steps: int | None) -> None:
    for seed in seeds:
        for index, mode in enumerate(modes):
            out_dir = run_dir(output_dir, mode, seed)
            if os.path.isfile(os.path.join(out_dir, "result.json")):
                print(f"[compare_modes] {mode} seed {seed}: done already ({out_dir})", flush=True)
                continue
            print(f"[compare_modes] {mode} seed {seed} -> {out_dir}", flush=True)
            train_one(gin_files, list(extra_bindings) + run_bindings(mode, seed, steps), out_dir)
            if index == 0:
                share_warm_start(output_dir, modes, seed)


# ------------------------------------------------------------------------------------------------ aggregation
def _val_value(record: dict[str, Any], key: str) -> float | None:
    """Mean over data sources of ``val-*/<source>/<key>/mean@<n>`` in one metrics record, or None."""
    pattern = re.compile(rf"^val-(?:core|aux)/[^/]+/{re.escape(key)}/mean@\d+$")
    values = [float(v) for k, v in record.items() if pattern.match(k)]
    return sum(values) / len(values) if values else None


def curves_of_run(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series of every curve in CURVES from a run's metrics.jsonl records."""
    curves: dict[str, list[tuple[int, float]]] = {key: [] for key, _ in CURVES}
    for record in records:
        for key, _ in CURVES:
            value = record.get(key) if "/" in key else _val_value(record, key)
            if value is not None and math.isfinite(float(value)):
                curves[key].append((int(record["step"]), float(value)))
    return curves


def summarize_run(curves: dict[str, list[tuple[int, float]]]) -> dict[str, float]:
    """Last validation values (and accuracy at the first validation, before PPO when val_before_train)."""
    out = {key: (curves[key][-1][1] if curves[key] else math.nan) for key in METRICS}
    out["acc_before"] = curves["acc"][0][1] if curves["acc"] else math.nan
    out["last_step"] = float(curves["acc"][-1][0]) if curves["acc"] else math.nan
    return out


def spread(values: list[float]) -> dict[str, float]:
    """mean, sample std (0 for one value), min and max of the finite values (NaN when there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    mean = sum(finite) / len(finite)
    var = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1) if len(finite) > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "min": min(finite), "max": max(finite), "n": len(finite)}


def collect(output_dir: str, modes: list[str], seeds: list[int]):
    """{mode: {seed: curves}} of the runs that have a metrics.jsonl."""
    from ntl_jax.ppo.metrics import read_metrics_jsonl

    runs: dict[str, dict[int, dict[str, list[tuple[int, float]]]]] = {}
    for mode in modes:
        for seed in seeds:
            path = os.path.join(run_dir(output_dir, mode, seed), "metrics.jsonl")
            if os.path.isfile(path):
                runs.setdefault(mode, {})[seed] = curves_of_run(read_metrics_jsonl(path))
    if not runs:
        raise ValueError(f"no metrics.jsonl under {output_dir}/<mode>/seed_<seed>; train first (without --report_only)")
    return runs


def summary_rows(runs) -> list[dict[str, Any]]:
    rows = []
    for mode, by_seed in runs.items():
        finals = [summarize_run(curves) for curves in by_seed.values()]
        row: dict[str, Any] = {"mode": mode, "seeds": len(finals)}
        for key in ("acc_before",) + tuple(METRICS):
            for stat, value in spread([f[key] for f in finals]).items():
                if stat != "n":
                    row[f"{key}_{stat}"] = value
        rows.append(row)
    return rows


def _fmt(row: dict[str, Any], key: str) -> str:
    if not math.isfinite(row[f"{key}_mean"]):
        return "n/a"
    text = f"{row[f'{key}_mean']:.4g} ± {row[f'{key}_std']:.2g}"
    return text + (f" ({row[f'{key}_min']:.4g}–{row[f'{key}_max']:.4g})" if row["seeds"] > 1 else "")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = ["mode", "seeds", "acc before PPO"] + list(METRICS.values())
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row["mode"], str(row["seeds"]), _fmt(row, "acc_before")] + [_fmt(row, key) for key in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Last validation of each run; mean ± sample std over seeds (min–max with several seeds). "
            "Digit accuracy: place-value match of the final answer's digits.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(runs, path: str) -> None:
    """One panel per curve: per mode the mean over seeds at the steps all seeds logged, and a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.5 * len(CURVES), 3.6))
    for ax, (key, title) in zip(axes, CURVES):
        for mode, by_seed in runs.items():
            series = [dict(curves[key]) for curves in by_seed.values() if curves[key]]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if not steps:
                continue
            values = [[s[step] for s in series] for step in steps]
            mean = [sum(v) / len(v) for v in values]
            ax.plot(steps, mean, marker="o" if len(steps) < 30 else None, label=f"{mode} (n={len(series)})")
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
        ax.set_title(title)
        if key == "abs_error":
            ax.set_yscale("log")
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(output_dir: str, modes: list[str], seeds: list[int], plot: bool = True) -> dict[str, str]:
    runs = collect(output_dir, modes, seeds)
    rows = summary_rows(runs)
    paths = {"markdown": os.path.join(output_dir, "summary.md"), "csv": os.path.join(output_dir, "summary.csv"),
             "runs": os.path.join(output_dir, "runs.csv")}
    with open(paths["markdown"], "w") as f:
        f.write(markdown_table(rows))
    write_csv(paths["csv"], rows)
    write_csv(paths["runs"], [{"mode": mode, "seed": seed, **summarize_run(curves)}
                              for mode, by_seed in runs.items() for seed, curves in by_seed.items()])
    if plot:
        paths["plot"] = os.path.join(output_dir, "learning_curves.png")
        plot_curves(runs, paths["plot"])
    return paths


# ------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gin_file", action="append", default=[], help="config file(s) (default configs/base.gin)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="extra bindings for every run")
    parser.add_argument("--output_dir", required=True, help="runs go to <output_dir>/<mode>/seed_<seed>")
    parser.add_argument("--seeds", type=int, default=3, help="K: seeds 0..K-1 (default 3)")
    parser.add_argument("--seed_list", help="explicit comma-separated seeds (overrides --seeds)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    parser.add_argument("--steps", type=int, help="PPO steps per run (TrainerConfig.total_training_steps)")
    parser.add_argument("--report_only", action="store_true", help="only aggregate existing runs")
    parser.add_argument("--no_plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        parser.error(f"--modes={','.join(args.modes)} is invalid; allowed: a subset of {', '.join(MODES)}")
    try:
        args.seeds = ([int(s) for s in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds)))
    except ValueError:
        parser.error(f"--seed_list={args.seed_list!r} is invalid; allowed: comma-separated integers")
    if not args.seeds or min(args.seeds) < 0:
        parser.error(f"seeds {args.seeds} are invalid; allowed: one or more integers >= 0")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps={args.steps} is invalid; allowed: an integer >= 1")
    args.gin_file = args.gin_file or [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   "configs", "base.gin")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    try:
        if not args.report_only:
            train_all(args.gin_file, args.gin_bindings, args.modes, args.seeds, args.output_dir, args.steps)
        paths = report(args.output_dir, args.modes, args.seeds, plot=not args.no_plot)
    except ValueError as err:
        print(f"compare_modes: error: {err}", file=sys.stderr)
        return 2
    with open(paths["markdown"]) as f:
        print(f.read())
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

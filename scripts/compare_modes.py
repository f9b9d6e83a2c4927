#!/usr/bin/env python
"""Standard PPO vs PPO + NTL over seeds, from one or two warm starts; tables with paired 95% intervals and curves.

    python scripts/compare_modes.py --seed_list 0,1,2,3,4 --output_dir outputs/compare
    python scripts/compare_modes.py --output_dir outputs/compare --seed_list 0,1,2,3,4 --report_only
    # the 2 x 2 design of docs/experiments/ntl_effect.md in one regime:
    python scripts/compare_modes.py --gin_file=regimes/long_numbers.gin --warm_starts=ce,ce_ntl \
        --modes=standard,ntl_final --seed_list=10,11,12,13,14 --target_acc=0.3 --output_dir=outputs/effect/long
    # tuning: a variant is a mode with extra bindings, run as its own arm from the same warm start
    python scripts/compare_modes.py --gin_file=regimes/sparse_reward.gin --warm_starts=ce --seed_list=20,21,22 \
        --variant='credit_1=ntl_credit:ntl_jax.NTLConfig.digit_credit = 1.0' --modes=standard,ntl_credit,credit_1 \
        --output_dir=outputs/tune/sparse_reward

An *arm* is a PPO mode (``MODES``: configs/standard.gin, ntl_final.gin, ntl_all.gin, ntl_hybrid.gin,
ntl_credit.gin; or a ``--variant``, a named mode plus bindings) started from a warm start (``WARM_STARTS``:
``ce_ntl``, the configs' supervised warm start with cross-entropy + NTL, or ``ce``, cross-entropy only). Arm names:
the mode (``ntl_final``) for the ``ce_ntl`` warm start, ``<mode>@ce`` otherwise. Each (arm, seed) trains in
``<output_dir>/<arm>/seed_<seed>`` through ``ntl_jax.train`` exactly as
``python -m ntl_jax.train --gin_file=<config> [--gin_file=...] --gin_bindings='ntl_jax.TrainerConfig.seed = <seed>'``
(plus ``ntl_jax.WarmStartConfig.ntl_weight = 0.0`` for ``@ce``) would. A finished run is not trained again (so a
variant whose bindings change needs a new name), and a run stopped by SIGTERM or SIGINT stops the grid (rerun the
same command: it resumes from the run's checkpoint). On the embedded task every arm of a seed and warm start starts
from the same warm-started policy (trained once, copied) and every arm of a seed is validated on the same held-out
set.

Held-out metrics come from the embedded task's scorer (``ntl_jax.rewards.arithmetic``), logged by validation as
``val-core/arithmetic/acc`` and ``val-aux/arithmetic/{abs_error,digit_acc}``: accuracy, mean and median absolute
error of the answer (an unanswered problem counts as answering 0) and place-value digit accuracy of the answer.

Writes ``summary.md`` / ``summary.csv`` (last validation of each run: mean and 95% t-interval over seeds, plus
accuracy before PPO and, with ``--target_acc``, the PPO steps to reach it), paired differences against the standard
arm (``summary.md``), ``runs.csv`` (one row per run) and ``learning_curves.png`` (held-out accuracy, MAE, median
error, digit accuracy, training accuracy and the fraction of GRPO groups without a correctness signal per PPO
step: mean over seeds with a min-max band). Needs matplotlib for the plot.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shutil
import sys
import json
from typing import Any

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
MODES = {"standard": "standard.gin", "ntl_final": "ntl_final.gin", "ntl_all": "ntl_all.gin",
         "ntl_hybrid": "ntl_hybrid.gin", "ntl_credit": "ntl_credit.gin"}
# Warm starts by name: the bindings that select them (``ce_ntl`` is the configs' own: CE + 0.3 NTL).
WARM_STARTS = {"ce_ntl": [], "ce": ["ntl_jax.WarmStartConfig.ntl_weight = 0.0"]}
DEFAULT_WARM_START = "ce_ntl"
# Summary metrics: name -> (validation key, statistic over problems, title). Mean absolute error and its median:
# a few far answers move the first and not the second.
METRICS = {"acc": ("acc", "mean", "held-out accuracy"), "abs_error": ("abs_error", "mean", "held-out answer MAE"),
           "digit_acc": ("digit_acc", "mean", "held-out digit accuracy"),
           "abs_error_median": ("abs_error", "median", "held-out median absolute error")}
# Training curves by metric name (the sampled responses' accuracy: the modes' rewards differ, their accuracy does
# not; and the fraction of prompts whose samples are all right or all wrong, which teach GRPO no correctness).
TRAINING_CURVES = {"reward_extra/acc/mean": "training accuracy (sampled)",
                   "reward_extra/acc/same_frac": "groups without a correctness signal"}
CURVES = tuple((name, title) for name, (_, _, title) in METRICS.items()) + tuple(TRAINING_CURVES.items())
# Two-sided 95% Student-t quantiles by degrees of freedom (n - 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       15: 2.131, 20: 2.086, 30: 2.042}


def parse_variant(spec: str) -> tuple[str, str, list[str]]:
    """``NAME=MODE:BINDING[;BINDING...]`` -> (name, mode, bindings); ValueError naming the spec if malformed."""
    name, _, rest = spec.partition("=")
    mode, _, bindings_text = rest.partition(":")
    name, mode = name.strip(), mode.strip()
    bindings = [b.strip() for b in bindings_text.split(";") if b.strip()]
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in MODES or mode not in MODES or not bindings:
        raise ValueError(f"--variant={spec!r} is invalid; allowed: NAME=MODE:BINDING[;BINDING...] with NAME of "
                         f"letters, digits, '_', '.', '-' and not a mode, MODE one of {', '.join(MODES)}")
    return name, mode, bindings


def mode_config(mode: str, variants: dict[str, tuple[str, list[str]]]) -> tuple[str, list[str]]:
    """(config file, extra bindings) of a shipped mode or a variant."""
    base, bindings = variants.get(mode, (mode, []))
    return os.path.join(CONFIG_DIR, MODES[base]), list(bindings)


def arm_name(mode: str, warm_start: str) -> str:
    return mode if warm_start == DEFAULT_WARM_START else f"{mode}@{warm_start}"


def arm_parts(arm: str) -> tuple[str, str]:
    """(mode, warm start) of an arm name."""
    mode, _, warm_start = arm.partition("@")
    return mode, warm_start or DEFAULT_WARM_START


def baselines(arms: list[str]) -> list[tuple[str, str]]:
    """(arm, baseline) pairs: every arm against the standard arm of its warm start, and, when the CE-only warm
    start ran, every NTL-warm-started arm against ``standard@ce`` too (no NTL anywhere against NTL somewhere)."""
    pairs = []
    for arm in arms:
        mode, warm_start = arm_parts(arm)
        for base in (arm_name("standard", warm_start), arm_name("standard", "ce")):
            if base != arm and base in arms and (arm, base) not in pairs:
                pairs.append((arm, base))
    return pairs


# ------------------------------------------------------------------------------------------------ running
def run_bindings(seed: int, steps: int | None) -> list[str]:
    """Gin bindings that turn the mode's config into this seed's run."""
    bindings = [f"ntl_jax.TrainerConfig.seed = {seed}"]
    if steps is not None:
        bindings.append(f"ntl_jax.TrainerConfig.total_training_steps = {steps}")
    return bindings


def run_dir(output_dir: str, arm: str, seed: int) -> str:
    return os.path.join(output_dir, arm, f"seed_{seed}")


def finished(out_dir: str) -> bool:
    """A run whose ``result.json`` exists and was not stopped by a signal (a preempted run resumes when rerun)."""
    path = os.path.join(out_dir, "result.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return not json.load(f).get("preempted", False)


def train_one(gin_files: list[str], bindings: list[str], out_dir: str) -> None:
    import gin

    from ntl_jax.train import build_experiment, parse_gin, run_experiment

    gin.clear_config()
    parse_gin(gin_files, bindings)
    run_experiment(build_experiment(out_dir))
    gin.clear_config()


def share_warm_start(output_dir: str, arms: list[str], seed: int) -> None:
    """Copy the first arm's warm start to the other arms of this seed (embedded task only; same cache key)."""
    source = os.path.join(run_dir(output_dir, arms[0], seed), "warm_start")
    if not os.path.isdir(source):
        return
    for arm in arms[1:]:
        target = os.path.join(run_dir(output_dir, arm, seed), "warm_start")
        if not os.path.exists(target):
            shutil.copytree(source, target)


def train_all(extra_gin_files: list[str], extra_bindings: list[str], arms: list[str], seeds: list[int],
              output_dir: str, steps: int | None, variants: dict[str, tuple[str, list[str]]] | None = None) -> None:
    for seed in seeds:
        for warm_start in dict.fromkeys(arm_parts(arm)[1] for arm in arms):
            group = [arm for arm in arms if arm_parts(arm)[1] == warm_start]
            for arm in group:
                out_dir = run_dir(output_dir, arm, seed)
                if finished(out_dir):
                    print(f"[compare_modes] {arm} seed {seed}: done already ({out_dir})", flush=True)
                    continue
                # An arm added to a finished grid starts from the warm start its seed's first arm trained.
                share_warm_start(output_dir, [group[0], arm], seed)
                print(f"[compare_modes] {arm} seed {seed} -> {out_dir}", flush=True)
                config, variant_bindings = mode_config(arm_parts(arm)[0], variants or {})
                gin_files = [config] + list(extra_gin_files)
                bindings = (list(extra_bindings) + variant_bindings + WARM_STARTS[warm_start]
                            + run_bindings(seed, steps))
                train_one(gin_files, bindings, out_dir)
                if not finished(out_dir):  # SIGTERM/SIGINT: the run saved a checkpoint; stop the grid here too
                    raise SystemExit(f"[compare_modes] {arm} seed {seed} was stopped before its last step; rerun "
                                     "the same command to resume it and the rest of the grid")
                share_warm_start(output_dir, group, seed)


# ------------------------------------------------------------------------------------------------ aggregation
def _val_value(record: dict[str, Any], key: str, stat: str = "mean") -> float | None:
    """Mean over data sources of ``val-*/<source>/<key>/<stat>@<n>`` in one metrics record, or None."""
    pattern = re.compile(rf"^val-(?:core|aux)/[^/]+/{re.escape(key)}/{stat}@\d+$")
    values = [float(v) for k, v in record.items() if pattern.match(k)]
    return sum(values) / len(values) if values else None


def curves_of_run(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series of every curve in CURVES from a run's metrics.jsonl records."""
    curves: dict[str, list[tuple[int, float]]] = {name: [] for name, _ in CURVES}
    for record in records:
        for name, _ in CURVES:
            value = _val_value(record, *METRICS[name][:2]) if name in METRICS else record.get(name)
            if value is not None and math.isfinite(float(value)):
                curves[name].append((int(record["step"]), float(value)))
    return curves


def steps_to_accuracy(curve: list[tuple[int, float]], target: float) -> float:
    """First validated PPO step whose held-out accuracy is >= ``target`` (0: the warm start already is); nan if none."""
    return next((float(step) for step, value in curve if value >= target), math.nan)


def summarize_run(curves: dict[str, list[tuple[int, float]]], target_acc: float | None = None) -> dict[str, float]:
    """Last validation values, accuracy at the first validation (before PPO when val_before_train), the mean
    fraction of groups without a correctness signal over training and, given ``target_acc``, the steps to reach it."""
    out = {key: (curves[key][-1][1] if curves[key] else math.nan) for key in METRICS}
    out["acc_before"] = curves["acc"][0][1] if curves["acc"] else math.nan
    out["last_step"] = float(curves["acc"][-1][0]) if curves["acc"] else math.nan
    signal = [value for _, value in curves["reward_extra/acc/same_frac"]]
    out["no_signal_frac"] = sum(signal) / len(signal) if signal else math.nan
    if target_acc is not None:
        out["steps_to_target"] = steps_to_accuracy(curves["acc"], target_acc)
    return out


def t95(n: int) -> float:
    """Two-sided 95% Student-t quantile for n values (n - 1 degrees of freedom; nearest tabulated below)."""
    dof = max(1, n - 1)
    return T95[max(k for k in T95 if k <= dof)]


def spread(values: list[float]) -> dict[str, float]:
    """mean, sample std, 95% t-interval half-width (0 for one value), min and max of the finite values."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "ci95": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    mean = sum(finite) / len(finite)
    var = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1) if len(finite) > 1 else 0.0
    ci = t95(len(finite)) * math.sqrt(var / len(finite)) if len(finite) > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "ci95": ci, "min": min(finite), "max": max(finite),
            "n": len(finite)}


def collect(output_dir: str, arms: list[str], seeds: list[int]):
    """{arm: {seed: curves}} of the runs that have a metrics.jsonl."""
    from ntl_jax.ppo.metrics import read_metrics_jsonl

    runs: dict[str, dict[int, dict[str, list[tuple[int, float]]]]] = {}
    for arm in arms:
        for seed in seeds:
            path = os.path.join(run_dir(output_dir, arm, seed), "metrics.jsonl")
            if os.path.isfile(path):
                runs.setdefault(arm, {})[seed] = curves_of_run(read_metrics_jsonl(path))
    if not runs:
        raise ValueError(f"no metrics.jsonl under {output_dir}/<arm>/seed_<seed>; train first (without --report_only)")
    return runs


def summary_rows(runs, target_acc: float | None = None) -> list[dict[str, Any]]:
    rows = []
    for arm, by_seed in runs.items():
        finals = [summarize_run(curves, target_acc) for curves in by_seed.values()]
        row: dict[str, Any] = {"mode": arm, "seeds": len(finals)}
        for key in ("acc_before",) + tuple(METRICS) + ("no_signal_frac",):
            for stat, value in spread([f[key] for f in finals]).items():
                if stat != "n":
                    row[f"{key}_{stat}"] = value
        if target_acc is not None:
            reached = [f["steps_to_target"] for f in finals if math.isfinite(f["steps_to_target"])]
            row["steps_to_target_reached"] = len(reached)
            row["steps_to_target_mean"] = sum(reached) / len(reached) if reached else math.nan
        rows.append(row)
    return rows


def _fmt(row: dict[str, Any], key: str) -> str:
    if not math.isfinite(row[f"{key}_mean"]):
        return "n/a"
    text = f"{row[f'{key}_mean']:.4g} ± {row[f'{key}_ci95']:.2g}"
    return text + (f" ({row[f'{key}_min']:.4g}–{row[f'{key}_max']:.4g})" if row["seeds"] > 1 else "")


def markdown_table(rows: list[dict[str, Any]], target_acc: float | None = None) -> str:
    header = (["arm", "seeds", "acc before PPO"] + [title for _, _, title in METRICS.values()]
              + ["groups without a correctness signal"])
    if target_acc is not None:
        header.append(f"steps to acc >= {target_acc:g} (seeds reaching)")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = ([row["mode"], str(row["seeds"]), _fmt(row, "acc_before")] + [_fmt(row, key) for key in METRICS]
                 + [_fmt(row, "no_signal_frac")])
        if target_acc is not None:
            mean = row["steps_to_target_mean"]
            cells.append(f"{mean:.4g} ({row['steps_to_target_reached']})" if math.isfinite(mean) else
                         f"n/a ({row['steps_to_target_reached']})")
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Last validation of each run; mean ± 95% t-interval half-width over seeds (min–max). "
            "MAE: an unanswered problem counts as answering 0. Digit accuracy: place-value match of the answer's "
            "digits, a missing or extra digit counting as a wrong place. Groups without a correctness signal: "
            "mean over training of the fraction of prompts whose samples are all right or all wrong.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def paired_differences(runs, target_acc: float | None = None) -> list[dict[str, Any]]:
    """(arm - baseline) of each metric on the seeds both ran, mean ± 95% interval, for the pairs of
    :func:`baselines` (or, when no standard arm ran, every arm against the first).

    The arms of a seed share the held-out set (and, for one warm start, the warm-started policy), so the paired
    difference removes the seed's own level (the seeds' accuracies spread over ~0.08, the modes' over ~0.01).
    Steps to ``target_acc`` are compared on the seeds where both arms reach it.
    """
    arms = list(runs)
    pairs = baselines(arms) or [(arm, arms[0]) for arm in arms[1:]]
    rows = []
    for arm, base in pairs:
        seeds = sorted(set(runs[arm]) & set(runs[base]))
        if not seeds:
            continue
        row: dict[str, Any] = {"mode": f"{arm} - {base}", "seeds": len(seeds)}
        finals = [(summarize_run(runs[arm][s], target_acc), summarize_run(runs[base][s], target_acc)) for s in seeds]
        keys = tuple(METRICS) + (("steps_to_target",) if target_acc is not None else ())
        for key in keys:
            diffs = [a[key] - b[key] for a, b in finals if math.isfinite(a[key] - b[key])]
            stats = spread(diffs)
            row.update({f"{key}_{stat}": value for stat, value in stats.items() if stat != "n"})
            row[f"{key}_lower"] = sum(d < 0 for d in diffs)
            row[f"{key}_n"] = len(diffs)
        rows.append(row)
    return rows


def paired_table(rows: list[dict[str, Any]], target_acc: float | None = None) -> str:
    keys = {key: title for key, (_, _, title) in METRICS.items()}
    if target_acc is not None:
        keys["steps_to_target"] = f"steps to acc >= {target_acc:g}"
    header = ["difference", "seeds"] + [f"{title} (seeds lower)" for title in keys.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row["mode"], str(row["seeds"])]
        for key in keys:
            if not math.isfinite(row[f"{key}_mean"]):
                cells.append("n/a")
                continue
            text = f"{row[f'{key}_mean']:+.3g} ± {row[f'{key}_ci95']:.2g} ({row[f'{key}_lower']})"
            cells.append(text + (f" [{row[f'{key}_n']} seeds]" if row[f"{key}_n"] != row["seeds"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Paired by seed (same held-out set; same warm start within a warm-start arm): mean ± 95% t-interval "
            "half-width of the difference; in brackets the number of seeds on which the arm's value is lower "
            "(and, where fewer, the seeds on which both values exist).")
    return "\n".join(lines) + "\n\n" + note + "\n"


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(runs, path: str) -> None:
    """One panel per curve: per arm the mean over seeds at the steps all seeds logged, and a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 3
    rows = -(-len(CURVES) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.4 * rows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, CURVES):
        for arm, by_seed in runs.items():
            series = [dict(curves[key]) for curves in by_seed.values() if curves[key]]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if not steps:
                continue
            values = [[s[step] for s in series] for step in steps]
            mean = [sum(v) / len(v) for v in values]
            ax.plot(steps, mean, marker="o" if len(steps) < 30 else None, label=f"{arm} (n={len(series)})")
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(CURVES):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(output_dir: str, arms: list[str], seeds: list[int], plot: bool = True,
           target_acc: float | None = None) -> dict[str, str]:
    runs = collect(output_dir, arms, seeds)
    rows = summary_rows(runs, target_acc)
    paths = {"markdown": os.path.join(output_dir, "summary.md"), "csv": os.path.join(output_dir, "summary.csv"),
             "runs": os.path.join(output_dir, "runs.csv")}
    paired = paired_differences(runs, target_acc)
    with open(paths["markdown"], "w") as f:
        f.write(markdown_table(rows, target_acc) + ("\n" + paired_table(paired, target_acc) if paired else ""))
    write_csv(paths["csv"], rows)
    write_csv(paths["runs"], [{"mode": arm, "seed": seed, **summarize_run(curves, target_acc)}
                              for arm, by_seed in runs.items() for seed, curves in by_seed.items()])
    if plot:
        paths["plot"] = os.path.join(output_dir, "learning_curves.png")
        plot_curves(runs, paths["plot"])
    return paths


# ------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gin_file", action="append", default=[],
                        help="extra config file(s) applied after each mode's config (a regime, a preset)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="extra bindings for every run")
    parser.add_argument("--output_dir", required=True, help="runs go to <output_dir>/<arm>/seed_<seed>")
    parser.add_argument("--seeds", type=int, default=3, help="K: seeds 0..K-1 (default 3)")
    parser.add_argument("--seed_list", help="explicit comma-separated seeds (overrides --seeds)")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=MODE:BINDING[;BINDING...]: a mode with extra bindings (applied after the regime's "
                             "files and --gin_bindings), usable in --modes as NAME; for tuning runs")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated subset of {', '.join(MODES)} and the --variant names")
    parser.add_argument("--warm_starts", default=DEFAULT_WARM_START,
                        help=f"comma-separated subset of {', '.join(WARM_STARTS)}: ce_ntl = cross-entropy + NTL (the "
                             "configs' own), ce = cross-entropy only; each mode runs from each")
    parser.add_argument("--steps", type=int, help="PPO steps per run (TrainerConfig.total_training_steps)")
    parser.add_argument("--target_acc", type=float,
                        help="also report the PPO steps to reach this held-out accuracy (first validation at or above)")
    parser.add_argument("--report_only", action="store_true", help="only aggregate existing runs")
    parser.add_argument("--no_plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    args = parser.parse_args(argv)
    try:
        args.variants = {name: (mode, bindings) for name, mode, bindings in map(parse_variant, args.variant)}
    except ValueError as err:
        parser.error(str(err))
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES and m not in args.variants]
    if bad or not args.modes:
        parser.error(f"--modes={','.join(args.modes)} is invalid; allowed: a subset of "
                     f"{', '.join(list(MODES) + list(args.variants))}")
    warm_starts = [w.strip() for w in args.warm_starts.split(",") if w.strip()]
    if not warm_starts or any(w not in WARM_STARTS for w in warm_starts):
        parser.error(f"--warm_starts={args.warm_starts} is invalid; allowed: a subset of {', '.join(WARM_STARTS)}")
    args.arms = [arm_name(mode, warm) for warm in warm_starts for mode in args.modes]
    try:
        args.seeds = ([int(s) for s in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds)))
    except ValueError:
        parser.error(f"--seed_list={args.seed_list!r} is invalid; allowed: comma-separated integers")
    if not args.seeds or min(args.seeds) < 0:
        parser.error(f"seeds {args.seeds} are invalid; allowed: one or more integers >= 0")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps={args.steps} is invalid; allowed: an integer >= 1")
    if args.target_acc is not None and not 0.0 < args.target_acc <= 1.0:
        parser.error(f"--target_acc={args.target_acc} is invalid; allowed: a number in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    try:
        if not args.report_only:
            train_all(args.gin_file, args.gin_bindings, args.arms, args.seeds, args.output_dir, args.steps,
                      args.variants)
        paths = report(args.output_dir, args.arms, args.seeds, plot=not args.no_plot, target_acc=args.target_acc)
    except ValueError as err:
        print(f"compare_modes: error: {err}", file=sys.stderr)
        return 2
    with open(paths["markdown"]) as f:
        print(f.read())
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

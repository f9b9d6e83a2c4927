#!/usr/bin/env python
"""Standard PPO vs PPO + NTL (final_answer, all_tokens, hybrid) over seeds; table with 95% intervals and curves.

    python scripts/compare_modes.py --seed_list 0,1,2,3,4 --output_dir outputs/compare
    python scripts/compare_modes.py --output_dir outputs/compare --seed_list 0,1,2,3,4 --report_only

Each mode is a shipped config (``MODES``: configs/standard.gin, ntl_final.gin, ntl_all.gin, ntl_hybrid.gin), each
(mode, seed) trains in ``<output_dir>/<mode>/seed_<seed>`` through ``ntl_jax.train`` exactly as
``python -m ntl_jax.train --gin_file=<config> --gin_bindings='ntl_jax.TrainerConfig.seed = <seed>'`` would; a run
whose result.json exists is not trained again. On the embedded default every mode of a seed starts from the same
warm-started policy (trained once, copied) and is validated on the same held-out set.

Held-out metrics come from the embedded task's scorer (``ntl_jax.rewards.arithmetic``), logged by validation as
``val-core/arithmetic/acc`` and ``val-aux/arithmetic/{abs_error,digit_acc}``: accuracy, mean absolute error of the
answer (an unanswered problem counts as answering 0) and place-value digit accuracy of the answer.

Writes ``summary.md`` / ``summary.csv`` (last validation of each run: mean and 95% t-interval over seeds, plus
accuracy before PPO), ``runs.csv`` (one row per run) and ``learning_curves.png`` (held-out accuracy, MAE, digit
accuracy and training accuracy per PPO step: mean over seeds with a min-max band). Needs matplotlib for the plot.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shutil
import sys
from typing import Any

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
MODES = {"standard": "standard.gin", "ntl_final": "ntl_final.gin", "ntl_all": "ntl_all.gin",
         "ntl_hybrid": "ntl_hybrid.gin"}
METRICS = {"acc": "held-out accuracy", "abs_error": "held-out answer MAE", "digit_acc": "held-out digit accuracy"}
# Held-out curves by validation key, then a training curve by metric name (the sampled responses' accuracy: the
# modes' rewards differ, their accuracy does not).
CURVES = (("acc", "held-out accuracy"), ("abs_error", "held-out answer MAE"),
          ("digit_acc", "held-out digit accuracy"), ("reward_extra/acc/mean", "training accuracy (sampled)"))
# Two-sided 95% Student-t quantiles by degrees of freedom (n - 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       15: 2.131, 20: 2.086, 30: 2.042}


# ------------------------------------------------------------------------------------------------ running
def run_bindings(seed: int, steps: int | None) -> list[str]:
    """Gin bindings that turn the mode's config into this seed's run."""
    bindings = [f"ntl_jax.TrainerConfig.seed = {seed}"]
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


def train_all(extra_gin_files: list[str], extra_bindings: list[str], modes: list[str], seeds: list[int],
              output_dir: str, steps: int | None) -> None:
    for seed in seeds:
        for index, mode in enumerate(modes):
            out_dir = run_dir(output_dir, mode, seed)
            if os.path.isfile(os.path.join(out_dir, "result.json")):
                print(f"[compare_modes] {mode} seed {seed}: done already ({out_dir})", flush=True)
                continue
            print(f"[compare_modes] {mode} seed {seed} -> {out_dir}", flush=True)
            gin_files = [os.path.join(CONFIG_DIR, MODES[mode])] + list(extra_gin_files)
            train_one(gin_files, list(extra_bindings) + run_bindings(seed, steps), out_dir)
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
    text = f"{row[f'{key}_mean']:.4g} ± {row[f'{key}_ci95']:.2g}"
    return text + (f" ({row[f'{key}_min']:.4g}–{row[f'{key}_max']:.4g})" if row["seeds"] > 1 else "")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = ["mode", "seeds", "acc before PPO"] + list(METRICS.values())
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row["mode"], str(row["seeds"]), _fmt(row, "acc_before")] + [_fmt(row, key) for key in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Last validation of each run; mean ± 95% t-interval half-width over seeds (min–max). "
            "MAE: an unanswered problem counts as answering 0. Digit accuracy: place-value match of the answer's "
            "digits, a missing or extra digit counting as a wrong place.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def paired_differences(runs) -> list[dict[str, Any]]:
    """Per mode after the first: (mode - first mode) of each metric on the seeds both ran, mean ± 95% interval.

    The modes of a seed share the warm start and the held-out set, so the paired difference removes the seed's
    own level (the seeds' accuracies spread over ~0.08, the modes' over ~0.01).
    """
    modes = list(runs)
    baseline = runs[modes[0]]
    rows = []
    for mode in modes[1:]:
        seeds = sorted(set(runs[mode]) & set(baseline))
        if not seeds:
            continue
        row: dict[str, Any] = {"mode": f"{mode} - {modes[0]}", "seeds": len(seeds)}
        for key in METRICS:
            diffs = [summarize_run(runs[mode][s])[key] - summarize_run(baseline[s])[key] for s in seeds]
            stats = spread(diffs)
            row.update({f"{key}_{stat}": value for stat, value in stats.items() if stat != "n"})
            row[f"{key}_lower"] = sum(d < 0 for d in diffs)
        rows.append(row)
    return rows


def paired_table(rows: list[dict[str, Any]]) -> str:
    header = ["difference", "seeds"] + [f"{name} (seeds lower)" for name in METRICS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row["mode"], str(row["seeds"])] + [
            f"{row[f'{key}_mean']:+.3g} ± {row[f'{key}_ci95']:.2g} ({row[f'{key}_lower']})" for key in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Paired by seed (same warm start, same held-out set): mean ± 95% t-interval half-width of the "
            "difference; in brackets the number of seeds on which the mode's value is lower.")
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
    paired = paired_differences(runs)
    with open(paths["markdown"], "w") as f:
        f.write(markdown_table(rows) + ("\n" + paired_table(paired) if paired else ""))
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
    parser.add_argument("--gin_file", action="append", default=[],
                        help="extra config file(s) applied after each mode's config (e.g. a preset)")
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

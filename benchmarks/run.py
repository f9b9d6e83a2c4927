"""Run the benchmark suite and print a table: `python -m benchmarks.run [--only a,b] [--quick] [--json out.json]`.

`--scale` (`common.SCALES`): full (default; the figures), quick (`--quick`: fewer repetitions and cases, 1-thread
PyTorch) or smoke (every module at a toy size, what tests/test_benchmarks.py runs).

Every row is a ratio against a baseline measured in the same run (targets are reported, never asserted).
`learning_speed` is long and runs only when named with `--only`. Load average is recorded around every benchmark
(the machines are shared); a benchmark that fails is reported with its error and the suite goes on.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
import traceback
from typing import Any

from benchmarks.common import SCALES, Result, check_scale, load_average, machine_info, uptime_line

BENCHMARKS = ("ntl_overhead", "rollout", "trl_grpo", "logprob_memory", "train_step_efficiency", "learning_speed")
ON_REQUEST_ONLY = ("learning_speed",)


def _selected(only: str | None) -> list[str]:
    if not only:
        return [b for b in BENCHMARKS if b not in ON_REQUEST_ONLY]
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"--only {','.join(unknown)} is unknown; allowed: {', '.join(BENCHMARKS)}")
    return names


def _fmt_ratio(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def markdown_table(results: list[Result], errors: dict[str, str]) -> str:
    lines = ["| benchmark | case | ntl-jax | baseline (its best setting) | machine limit | ratio | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.benchmark} | {r.case} | {r.ours} | {r.baseline} | {r.machine_limit or '-'} "
                     f"| {_fmt_ratio(r.ratio)} | {r.target_op} {r.target:g} | {'yes' if r.met else 'NO'} |")
    for name, err in errors.items():
        lines.append(f"| {name} | error | {err.splitlines()[-1][:80]} | | | | | NO |")
    return "\n".join(lines)


def run_suite(names: list[str], scale: str) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine_info(), "mode": check_scale(scale), "benchmarks": {},
                              "results": [], "errors": {}}
    results: list[Result] = []
    for name in names:
        print(f"== {name} ({scale}) | {uptime_line()}", flush=True)
        load_before, start = load_average(), time.perf_counter()
        try:
            rows = importlib.import_module(f"benchmarks.{name}").run(scale)
        except Exception:  # noqa: BLE001 - one failing benchmark must not hide the others
            report["errors"][name] = traceback.format_exc()
            print(report["errors"][name], file=sys.stderr, flush=True)
            rows = []
        elapsed = time.perf_counter() - start
        report["benchmarks"][name] = {"elapsed_s": elapsed, "load_before": load_before, "load_after": load_average()}
        for row in rows:
            limit = f" | machine limit {row.machine_limit}" if row.machine_limit else ""
            print(f"   {row.case}: ntl-jax {row.ours} | baseline {row.baseline}{limit} | ratio {_fmt_ratio(row.ratio)} "
                  f"(target {row.target_op} {row.target:g}: {'met' if row.met else 'MISSED'})", flush=True)
        results.extend(rows)
    report["results"] = [r.to_dict() for r in results]
    report["machine"]["uptime_end"] = uptime_line()
    report["table"] = markdown_table(results, report["errors"])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--scale", choices=SCALES, default="full",
                        help="full: the figures; quick: fewer repetitions / cases, 1-thread PyTorch; smoke: toy sizes")
    parser.add_argument("--quick", action="store_true", help="same as --scale quick")
    parser.add_argument("--json", help="write the full report (details of every row) to this file")
    args = parser.parse_args(argv)
    if args.quick and args.scale not in ("full", "quick"):
        parser.error(f"--quick and --scale {args.scale} contradict each other; give one of them")
    report = run_suite(_selected(args.only), "quick" if args.quick else args.scale)
    print("\n" + report["table"])
    print(f"\n{report['machine']['date']} | {report['machine']['cpu']} x{report['machine']['cpu_count']} | "
          f"start: {report['machine']['uptime_start']} | end: {report['machine']['uptime_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

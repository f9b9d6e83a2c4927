"""What ``PPOConfig.response_bucket`` would save on logged runs: the response width each iteration's passes would
use (its longest response rounded up to a multiple of the bucket, at most ``max_response_length``) against the full
``max_response_length``, from the ``response_length/max`` every run logs.

    python benchmarks/response_bucket.py --max_response_length 48 --prompt_width 16 --buckets 8,16 \\
        --json benchmarks/results/response_bucket.json RUN_DIR [RUN_DIR ...]

Per bucket and run: the fraction of response positions saved, and of the positions of whole sequences
(prompt + response: the linear layers' share of a forward's FLOPs), and of attention score entries
((prompt + response)^2 per head: the attention's share), each averaged over the run's iterations.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ntl_jax.ppo.trainer import bucketed_width


def savings(longest_per_iteration: list[float], bucket: int, max_response_length: int,
            prompt_width: int) -> dict[str, float]:
    # The width trim_responses trains at for each iteration's longest response.
    widths = [bucketed_width(int(x), bucket, max_response_length) for x in longest_per_iteration]
    full, n = max_response_length, len(widths)
    return {
        "iterations": n,
        "mean_trained_width": sum(widths) / n,
        "response_positions_saved": 1 - sum(widths) / (n * full),
        "sequence_positions_saved": 1 - sum(prompt_width + w for w in widths) / (n * (prompt_width + full)),
        "attention_entries_saved": 1 - sum((prompt_width + w) ** 2 for w in widths) / (n * (prompt_width + full) ** 2),
    }


def longest_responses(run_dir: str) -> list[float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [float(r["response_length/max"]) for r in rows if "response_length/max" in r]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders with metrics.jsonl")
    parser.add_argument("--max_response_length", type=int, required=True)
    parser.add_argument("--prompt_width", type=int, required=True, help="the prompt bucket the runs used")
    parser.add_argument("--buckets", default="8,16,32", help="comma-separated response_bucket values")
    parser.add_argument("--json", help="write the table to this file too")
    args = parser.parse_args(argv)
    buckets = [int(b) for b in args.buckets.split(",")]
    if args.max_response_length < 1 or args.prompt_width < 0 or any(b < 1 for b in buckets):
        parser.error("--max_response_length >= 1, --prompt_width >= 0 and buckets >= 1 are allowed")
    table = []
    for run in args.runs:
        longest = longest_responses(run)
        if not longest:
            parser.error(f"{run}: no response_length/max in metrics.jsonl")
        for bucket in buckets:
            row = {"run": run, "bucket": bucket, **savings(longest, bucket, args.max_response_length,
                                                           args.prompt_width)}
            table.append(row)
            print(f"{run} bucket {bucket}: width {row['mean_trained_width']:.1f} of {args.max_response_length}, "
                  f"response positions -{row['response_positions_saved']:.1%}, sequence positions "
                  f"-{row['sequence_positions_saved']:.1%}, attention entries -{row['attention_entries_saved']:.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"max_response_length": args.max_response_length, "prompt_width": args.prompt_width,
                       "rows": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

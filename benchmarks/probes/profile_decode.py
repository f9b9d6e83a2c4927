#!/usr/bin/env python
"""Where a decode step goes: XLA:CPU's per-kernel times inside `Sampler.generate`'s decode loop.

Builds the rollout benchmark's model (`--model tiny`: width 128, 4 layers, vocabulary 8,192; `mid`: width 512,
8 layers) with random weights, generates greedily for the benchmark's 32 prompts x 64 new tokens (warm, twice),
then once more under `jax.profiler.trace` and prints, per decode step, the time of each compiled kernel (thunk)
with its output shape and the JAX operation it came from (`op_name` of the optimised HLO), largest first. The
profiler's own overhead inflates every figure by roughly a fifth, so read them as shares, not as absolute times.

    python benchmarks/probes/profile_decode.py --model tiny --top 30

The layout of the KV cache (`ntl_jax.models.decoder.KVCache`), the blocked greedy argmax, the optional
rollout log-probs (`ntl_jax.models.sampler`) and the CPU decode attention's per-group-member contractions
(`ntl_jax.models.decoder.grouped_attention`; A/B: `benchmarks/probes/ab_decode_attention.py`) were chosen from this table.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _kernel_metadata(dump_dir: str) -> dict[str, tuple[str, str]]:
    """Kernel name -> (output shape, op_name) from the decode program's optimised HLO."""
    (path,) = glob.glob(os.path.join(dump_dir, "*jit_decode.cpu_after_optimizations.txt"))
    found = {}
    for line in open(path, encoding="utf-8"):
        match = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name="([^"]+)"', line)
        if match:
            found[match.group(1)] = (match.group(2), match.group(3).replace("jit(decode)/while/body/", ""))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "mid"), default="tiny")
    parser.add_argument("--top", type=int, default=30, help="kernels to list")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="profile_decode_")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={work}/hlo".strip()

    sys.path.insert(0, REPO_ROOT)  # the benchmarks package
    import jax
    from flax import nnx

    from benchmarks.common import MID, TINY, save_random_checkpoint
    from benchmarks.rollout import BATCH, EOS_ID, NEW_TOKENS, PAD_ID, make_prompts
    from ntl_jax.models.hf_io import from_pretrained
    from ntl_jax.models.sampler import Sampler, SamplingParams

    spec = TINY if args.model == "tiny" else MID
    model = from_pretrained(save_random_checkpoint(spec, os.path.join(work, "model"), eos_id=EOS_ID, pad_id=PAD_ID,
                                                   silence_token=EOS_ID))
    graphdef, state = nnx.split(model)
    sampler = Sampler(graphdef, model.config, eos_token_ids=[EOS_ID], pad_token_id=PAD_ID)
    prompts, params = make_prompts(spec.vocab, batch=BATCH), SamplingParams(max_new_tokens=NEW_TOKENS, greedy=True)

    def generate():
        return sampler.generate(state, prompts, params, jax.random.key(0))

    generate()
    start = time.perf_counter()
    generate()
    unprofiled_s = time.perf_counter() - start
    with jax.profiler.trace(os.path.join(work, "trace"), create_perfetto_trace=True):
        generate()
    (trace,) = glob.glob(os.path.join(work, "trace", "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(trace) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    metadata = _kernel_metadata(os.path.join(work, "hlo"))
    total_us, calls = collections.Counter(), collections.Counter()
    for event in events:
        if (event.get("args") or {}).get("hlo_module") == "jit_decode" and event["name"] in metadata:
            total_us[event["name"]] += event["dur"]
            calls[event["name"]] += 1
    steps = sampler.last_num_steps - 1  # model steps in the loop
    print(f"{args.model}: {BATCH} rows x {NEW_TOKENS} tokens, {steps} model steps; generate {unprofiled_s * 1e3:.1f} ms "
          f"unprofiled ({unprofiled_s / steps * 1e6:.0f} us per step); profiled kernels "
          f"{sum(total_us.values()) / steps:.0f} us per step in {sum(calls.values()) / steps:.0f} kernels")
    print(f"{'us/step':>8} {'calls':>5}  {'kernel':30} {'output':30} op")
    for name, us in total_us.most_common(args.top):
        shape, op = metadata[name]
        print(f"{us / steps:8.1f} {calls[name] / steps:5.1f}  {name[:30]:30} {shape[:30]:30} {op[:60]}")


if __name__ == "__main__":
    main()

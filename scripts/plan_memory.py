#!/usr/bin/env python
"""Per-device memory of a training config, planned before anyone rents hardware: no weights, no accelerator.

    python scripts/plan_memory.py --gin_file=configs/gsm8k_qwen2_5_0_5b_ntl_final.gin --devices=1 \\
        --model_config=configs/models/qwen2.5-0.5b-instruct.json --limit_gib=80

The iteration's jitted steps (generation prefill and decode, the log-prob, reference and value passes, the actor
and critic updates) are compiled ahead of time on abstract arrays (``jax.ShapeDtypeStruct`` with the run's
``NamedSharding``s) over ``--devices`` simulated CPU devices, meshed as the config says. XLA's per-device memory
analysis of each compiled step gives its arguments, outputs, aliased (donated) buffers and temporaries; with the
resident state (actor and critic parameters and Adam moments, the reference parameters) the peak of a phase is

    peak = resident + (arguments - resident arguments) + temporaries + (outputs - aliased)

The model shape comes from ``TrainerConfig.model_path``/config.json or ``--model_config`` (a config.json; the
Qwen2.5 ones are in configs/models/). Sizes are XLA:CPU's for the same partitioned programs, compiled with its
memory-minimising scheduler (the default one keeps rematerialised activations alive); a GPU or TPU compiler fuses
differently, so treat them as a plan, not a measurement. Exit status 1 when a phase exceeds ``--limit_gib``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin_file", action="append", required=True, help="training config(s)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="extra gin bindings")
    parser.add_argument("--devices", type=int, required=True, help="devices to plan for (simulated on the CPU)")
    parser.add_argument("--model_config", help="a HF config.json with the model's shape (default: model_path's)")
    parser.add_argument("--limit_gib", type=float, default=None, help="fail (exit 1) above this per-device peak")
    parser.add_argument("--backend", choices=("cpu", "native"), default="cpu",
                        help="cpu: simulated CPU devices (no accelerator needed); native: this machine's own devices "
                             "and compiler (a GPU or TPU; --devices at most its device count)")
    parser.add_argument("--json", help="also write the phases and the peak to this JSON file")
    args = parser.parse_args(argv)
    if args.devices < 1:
        parser.error(f"--devices={args.devices} is invalid; allowed: an integer >= 1")
    return args


def _bytes_per_device(tree) -> int:
    """Bytes one device holds of a pytree of ShapeDtypeStructs with shardings (the largest shard of each leaf)."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def _abstract(tree, shardings):
    import jax

    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _analysis(compiled) -> dict[str, int]:
    stats = compiled.memory_analysis()
    return {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
            "aliased": stats.alias_size_in_bytes, "temporaries": stats.temp_size_in_bytes}


def plan(args: argparse.Namespace) -> tuple[list[dict], int, str]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from ntl_jax.distributed.mesh import make_mesh
    from ntl_jax.models.config import ModelConfig
    from ntl_jax.models.decoder import CausalLM, ValueModel
    from ntl_jax.models.sampler import Sampler, SamplingParams, resolve_cache_dtype
    from ntl_jax.models.sharding import LOGICAL_AXIS_RULES, state_shardings
    from ntl_jax.ppo.rollout import prompts_per_chunk
    from ntl_jax.ppo.state import DTYPES, optimizer_shardings
    from ntl_jax.ppo.compile_ahead import abstract_rollout
    from ntl_jax.ppo.steps import (ActorLossSettings, batch_sharding, make_actor_update,
                                   make_critic_update, make_logprob_step, make_optimizer, make_value_step)
    from ntl_jax.train import build_experiment, parse_gin

    parse_gin(args.gin_file, args.gin_bindings)
    config = build_experiment()
    ppo, run = config.ppo, config.trainer
    model_json = args.model_config or (os.path.join(run.model_path, "config.json") if run.model_path else None)
    if model_json is None or not os.path.isfile(model_json):
        raise ValueError(f"model shape {model_json!r} not found; allowed: --model_config=<config.json> or a "
                         "TrainerConfig.model_path folder with config.json")
    import json

    with open(model_json, encoding="utf-8") as f:
        model_config = ModelConfig.from_hf_dict(json.load(f))
    # Simulated CPU devices stand for accelerators: kv_cache_dtype='auto' is planned as it resolves there.
    target_platform = "gpu" if args.backend == "cpu" else jax.default_backend()
    mesh = make_mesh(run.mesh_data, run.mesh_fsdp, run.mesh_tensor)
    dtype, param_dtype = DTYPES[run.dtype], DTYPES[run.param_dtype]

    def abstract_module(cls):
        module = nnx.eval_shape(lambda: cls(model_config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype,
                                            remat=run.remat, scan_layers=run.scan_layers,
                                            attention=run.attention))
        graphdef, state = nnx.split(module)
        shardings = state_shardings(state, mesh, LOGICAL_AXIS_RULES)
        return graphdef, _abstract(state, shardings), shardings

    def abstract_optimizer(params, param_shardings, lr):
        tx = make_optimizer(lr, weight_decay=ppo.weight_decay, grad_clip=ppo.grad_clip)
        shardings = optimizer_shardings(tx, params, param_shardings, mesh)  # as ModuleState places them
        return tx, _abstract(jax.eval_shape(tx.init, params), shardings), shardings

    actor_graph, actor_params, actor_shardings = abstract_module(CausalLM)
    actor_tx, actor_opt, actor_opt_shardings = abstract_optimizer(actor_params, actor_shardings, ppo.actor_lr)
    resident = {"actor params": actor_params, "actor Adam": actor_opt}
    if ppo.uses_reference:
        resident["reference params"] = actor_params
    critic = None
    if ppo.uses_critic:
        critic_graph, critic_params, critic_shardings = abstract_module(ValueModel)
        critic_tx, critic_opt, critic_opt_shardings = abstract_optimizer(critic_params, critic_shardings,
                                                                          ppo.critic_lr)
        resident.update({"critic params": critic_params, "critic Adam": critic_opt})
        critic = (critic_graph, critic_params, critic_shardings, critic_tx, critic_opt, critic_opt_shardings)
    resident_bytes = {name: _bytes_per_device(tree) for name, tree in resident.items()}
    resident_total = sum(resident_bytes.values())

    data = batch_sharding(mesh)
    rows = ppo.train_batch_size * ppo.rollout_n
    seq = lambda n, t, dt=jnp.int32: jax.ShapeDtypeStruct((n, t), dt, sharding=data)  # noqa: E731
    digit_ids = np.arange(10, dtype=np.int32) if config.use_ntl else None
    phases = []

    def add(name, compiled, resident_args):
        stats = _analysis(compiled)
        transient = (stats["arguments"] - resident_args) + stats["temporaries"] + stats["outputs"] - stats["aliased"]
        phases.append({"phase": name, **stats, "peak": resident_total + max(transient, 0)})

    # Generation as `Sampler.generate` runs it: prefill over the prompts (their cache rows then repeated for the
    # rollout_n samples), then the decode loop over the rows with the donated KV cache; both padded to the shards.
    sampler = Sampler(actor_graph, model_config, eos_token_ids=[0], pad_token_id=0, mesh=mesh,
                      digit_ids=digit_ids,
                      cache_dtype=resolve_cache_dtype(run.kv_cache_dtype, target_platform),
                      platform=target_platform)
    prompt_len = sampler.prompt_width([[0] * ppo.max_prompt_length])  # the bucket of the longest allowed prompt
    # With PPOConfig.rollout_max_rows the rows go to the sampler in chunks: one chunk is what a call holds.
    chunk_prompts = prompts_per_chunk(ppo.train_batch_size, ppo.rollout_n, ppo.rollout_max_rows)
    num_prompts, num_rows = sampler.padded_sizes(chunk_prompts, ppo.rollout_n)
    prefill, decode = sampler.build_programs(
        prompt_len, num_rows, SamplingParams(max_new_tokens=ppo.max_response_length, n=ppo.rollout_n),
        with_digits=False, with_logprobs=False)
    prompts = (seq(num_prompts, prompt_len), seq(num_prompts, prompt_len))
    prefill_lowered = prefill.lower(actor_params, *prompts)
    add("generation: prefill", prefill_lowered.compile(), resident_bytes["actor params"])
    cache, first_logits = prefill_lowered.out_info
    rng = jax.eval_shape(lambda: jax.random.key(0))
    index = jax.ShapeDtypeStruct((num_rows,), jnp.int32, sharding=data)
    add("generation: decode loop", decode.lower(actor_params, cache, first_logits, seq(num_rows, prompt_len), rng,
                                                index, index).compile(), resident_bytes["actor params"])

    # Forward passes over the iteration's responses, the log-prob micro-batch at a time.
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    n = ppo.log_prob_chunk(data_parallel) or rows
    inputs = (seq(n, prompt_len), seq(n, prompt_len), seq(n, ppo.max_response_length),
              seq(n, ppo.max_response_length, jnp.float32))
    logprob = make_logprob_step(actor_graph, mesh, actor_shardings, digit_ids=digit_ids,
                                chunk_size=ppo.logprob_chunk_size, temperature=ppo.temperature)
    add("old log-probs (+ NTL digit slice)", logprob.lower(actor_params, *inputs).compile(),
        resident_bytes["actor params"])
    if ppo.uses_reference:
        reference = make_logprob_step(actor_graph, mesh, actor_shardings, digit_ids=None,
                                      chunk_size=ppo.logprob_chunk_size, temperature=ppo.temperature,
                                      compute_entropy=False)
        add("reference log-probs", reference.lower(actor_params, *inputs).compile(), resident_bytes["actor params"])
    if critic is not None:
        values = make_value_step(critic[0], mesh, critic[2])
        add("critic values", values.lower(critic[1], *inputs).compile(), resident_bytes["critic params"])

    # Updates on one mini-batch, gradients accumulated over micro-batches; params and Adam state donated.
    num_micro = ppo.micro_batches(data_parallel)
    m, t = ppo.ppo_mini_batch_size * ppo.rollout_n, ppo.max_response_length
    batch = abstract_rollout(m, prompt_len, t, data)  # the mini-batch exactly as the trainer compiles it
    settings = ActorLossSettings.from_config(ppo, config.ntl.method if config.use_ntl else None)
    actor_update = make_actor_update(actor_graph, actor_tx, settings, digit_ids=digit_ids,
                                     num_micro_batches=num_micro, mesh=mesh, param_shardings=actor_shardings,
                                     opt_shardings=actor_opt_shardings)
    weight = jax.ShapeDtypeStruct((), jnp.float32)
    add(f"actor update ({num_micro} micro-batches)", actor_update.lower(actor_params, actor_opt, batch,
                                                                        weight).compile(),
        resident_bytes["actor params"] + resident_bytes["actor Adam"])
    if critic is not None:
        critic_update = make_critic_update(critic[0], critic[3], ppo, num_micro_batches=num_micro, mesh=mesh,
                                           param_shardings=critic[2], opt_shardings=critic[5])
        add(f"critic update ({num_micro} micro-batches)", critic_update.lower(critic[1], critic[4], batch).compile(),
            resident_bytes["critic params"] + resident_bytes["critic Adam"])
    header = (f"{model_json}: {sum(x.size for x in jax.tree.leaves(actor_params)) / 1e6:.1f}M parameters, "
              f"{args.devices} devices as mesh {dict(mesh.shape)}, dtype {run.dtype}, param_dtype {run.param_dtype}, "
              f"remat {run.remat}, scan_layers {run.scan_layers}, kv_cache_dtype {run.kv_cache_dtype} "
              f"({jnp.dtype(resolve_cache_dtype(run.kv_cache_dtype, target_platform)).name}); "
              f"{rows} responses x ({prompt_len} + {t}) tokens per iteration, mini-batch {m}")
    resident_lines = [f"  {name}: {size / GIB:.2f} GiB" for name, size in resident_bytes.items()]
    return phases, resident_total, "\n".join([header, "resident per device:", *resident_lines,
                                              f"  total: {resident_total / GIB:.2f} GiB"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.backend == "cpu":
        # XLA:CPU's default scheduler runs independent work early for concurrency and so keeps rematerialised
        # activations alive; the memory-minimising scheduler orders the program as accelerator compilers do.
        os.environ["XLA_FLAGS"] = " ".join(
            [f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
            + [f"--xla_force_host_platform_device_count={args.devices}",
               "--xla_cpu_enable_concurrency_optimized_scheduler=false"])
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, REPO_ROOT)
    try:
        phases, _, summary = plan(args)
    except ValueError as err:
        print(f"plan_memory: error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    print(summary)
    print("| phase | arguments | outputs | aliased | temporaries | peak per device |")
    print("|---|---|---|---|---|---|")
    for p in phases:
        print(f"| {p['phase']} | {p['arguments'] / GIB:.2f} | {p['outputs'] / GIB:.2f} | {p['aliased'] / GIB:.2f} "
              f"| {p['temporaries'] / GIB:.2f} | {p['peak'] / GIB:.2f} GiB |")
    worst = max(phases, key=lambda p: p["peak"])
    print(f"peak: {worst['peak'] / GIB:.2f} GiB per device ({worst['phase']})")
    if args.json:
        import jax

        with open(args.json, "w") as f:
            json.dump({"backend": jax.default_backend(), "devices": args.devices, "phases": phases,
                       "peak_gib": worst["peak"] / GIB, "peak_phase": worst["phase"], "limit_gib": args.limit_gib},
                      f, indent=2, default=float)
    if args.limit_gib is not None and worst["peak"] > args.limit_gib * GIB:
        print(f"plan_memory: {worst['peak'] / GIB:.2f} GiB exceeds --limit_gib={args.limit_gib}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

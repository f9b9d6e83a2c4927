"""Shared plumbing of the benchmark suite: worker subprocesses, thread settings, timing, results, random models.

Worker protocol: `python -m benchmarks.<module> --worker <function> '<json args>'` runs `<function>(args)` in a
fresh interpreter and prints one line `@@BENCH_RESULT@@ <json>`; `run_worker` starts it with the requested
environment (thread settings) and parses that line. Each heavy side of a comparison runs in its own worker, so
memory peaks, thread pools and allocator state never leak from one side into the other.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

from ntl_jax.cpu.huge_pages import glibc_version, huge_page_tunables, thp_mode

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_MARKER = "@@BENCH_RESULT@@ "

def _threads_env(n: int, **extra: str) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n), "OPENBLAS_NUM_THREADS": str(n), **extra}


# Every PyTorch baseline runs at each of these settings (name -> (torch.set_num_threads, environment)); the fastest
# is the baseline. "2thr" is PyTorch's default on a 2-core machine (OpenMP spin-waits between ops); the passive wait
# policy helps some small-op workloads and hurts others, so both are measured. Every worker runs with glibc's
# huge-page tunable (`worker_env`, as `python -m ntl_jax.train` runs); the settings without "-hugepages" turn it
# off, "2thr-hugepages" keeps it, so PyTorch is measured both ways.
_NO_HUGE_PAGES = {"GLIBC_TUNABLES": ""}
TORCH_THREAD_SETTINGS: dict[str, tuple[int, dict[str, str]]] = {
    "1thr": (1, _threads_env(1, **_NO_HUGE_PAGES)),
    "2thr": (2, _threads_env(2, **_NO_HUGE_PAGES)),
    "2thr-passive": (2, _threads_env(2, OMP_WAIT_POLICY="PASSIVE", **_NO_HUGE_PAGES)),
    "2thr-hugepages": (2, _threads_env(2)),
}
QUICK_TORCH_THREAD_SETTINGS = ("1thr",)  # quick / smoke: one setting, a check that the suite runs, not a baseline

# How much of each benchmark to run. full: the figures (every baseline setting, all cases and repetitions).
# quick: fewer repetitions / cases and 1-thread PyTorch: checks the suite end to end at the real shapes, its ratios
# are not baselines at their best. smoke: every module at a toy size (seconds; tests/test_benchmarks.py), so the
# suite cannot rot; its numbers mean nothing.
SCALES = ("full", "quick", "smoke")


# The embedded task at a toy size (gin bindings): 2,000 training problems, 64 held-out, a 40-step warm start,
# 8 prompts x 4 samples per iteration. Quick / smoke scale of the learning benchmarks.
TOY_TASK_BINDINGS = (
    "ntl_jax.EmbeddedTaskConfig.num_train = 2000", "ntl_jax.EmbeddedTaskConfig.num_val = 64",
    "ntl_jax.WarmStartConfig.max_steps = 40", "ntl_jax.WarmStartConfig.eval_every = 20",
    "ntl_jax.WarmStartConfig.eval_samples = 64", "ntl_jax.WarmStartConfig.target_accuracy = 1.0",
    "ntl_jax.PPOConfig.train_batch_size = 8", "ntl_jax.PPOConfig.rollout_n = 4",
    "ntl_jax.PPOConfig.ppo_mini_batch_size = 8", "ntl_jax.PPOConfig.ppo_micro_batch_size = 32",
    "ntl_jax.TrainerConfig.val_batch_size = 64",
)


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"benchmark scale {scale!r} is unknown; allowed: {', '.join(SCALES)}")
    return scale


def torch_thread_settings(scale: str) -> tuple[str, ...]:
    return tuple(TORCH_THREAD_SETTINGS) if check_scale(scale) == "full" else QUICK_TORCH_THREAD_SETTINGS


JAX_THREADS_NOTE = "XLA:CPU default (one intra-op pool over all cores)"


class WorkerError(RuntimeError):
    """A benchmark worker subprocess failed or printed no result."""


def torch_thread_note(setting: str) -> str:
    threads, env = TORCH_THREAD_SETTINGS[setting]
    return f"torch.set_num_threads({threads}) " + " ".join(f"{k}={v}" for k, v in env.items())


def worker_env(extra: dict[str, str] | None) -> dict[str, str]:
    """The environment of a benchmark worker process: one real device, no inherited thread caps, the huge-page
    tunable, then ``extra`` (a `TORCH_THREAD_SETTINGS` environment, say)."""
    env = dict(os.environ)
    # Tests set 8 simulated CPU devices; a benchmark measures one real device.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY"):
        env.pop(key, None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # Transparent huge pages for malloc'd buffers, as `python -m ntl_jax.train` restarts itself with (see
    # ntl_jax/cpu/huge_pages.py); a setting's `extra` can turn it off (GLIBC_TUNABLES="").
    tunables = huge_page_tunables(env, glibc_version(), thp_mode())
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    env.update(extra or {})
    return env


def run_worker(module: str, function: str, args: dict[str, Any], *, env: dict[str, str] | None = None,
               timeout_s: float = 3600.0) -> dict[str, Any]:
    """Run `benchmarks.<module>.<function>(args)` in a fresh Python; returns its dict plus `process_wall_s`."""
    cmd = [sys.executable, "-m", f"benchmarks.{module}", "--worker", function, json.dumps(args)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=worker_env(env), capture_output=True, text=True,
                          timeout=timeout_s)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        raise WorkerError(f"worker {module}.{function} exited with {proc.returncode}:\n{tail}")
    result = json.loads(lines[-1][len(RESULT_MARKER):])
    result["process_wall_s"] = wall
    return result


def worker_main(functions: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
    """Entry point of `python -m benchmarks.<module> --worker <name> '<json>'`."""
    if len(sys.argv) != 4 or sys.argv[1] != "--worker" or sys.argv[2] not in functions:
        names = ", ".join(sorted(functions))
        raise SystemExit(f"usage: python -m {sys.argv[0]} --worker <{names}> '<json args>'")
    result = functions[sys.argv[2]](json.loads(sys.argv[3]))
    print(RESULT_MARKER + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------- timing
def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> dict[str, float]:
    """median / min / max / n of a list of timings (seconds)."""
    return {"median": median(values), "min": float(min(values)), "max": float(max(values)), "n": len(values)}


def timed_call(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average {load_average()}"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_fields() -> dict[str, Any]:
    """x86 family / model numbers and the vector extensions that decide XLA:CPU's fastest matmul path."""
    fields: dict[str, Any] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key in ("cpu family", "model") and key not in fields:
                    fields[key] = value
                elif key == "flags":
                    flags = set(value.split())
                    fields["vector_extensions"] = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_tile"})
                    break
    except OSError:
        pass
    return fields


def machine_info() -> dict[str, Any]:
    """What the run was measured on (no JAX import: workers report their own device)."""
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = float("nan")
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(), "cpu_fields": _cpu_fields(), "cpu_count": os.cpu_count(), "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {n: _version(n) for n in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "trl")},
        "uptime_start": uptime_line(),
    }


def jax_device_note() -> str:
    import jax

    device = jax.devices()[0]
    return f"{device.platform}:{getattr(device, 'device_kind', '')} x{jax.device_count()}"


# ----------------------------------------------------------------------------------------------- results
@dataclasses.dataclass
class Result:
    """One row of the table. `ratio` is defined per benchmark (`ratio_desc`); `met` compares it to `target`."""

    benchmark: str
    case: str
    ours: str
    baseline: str
    ratio: float
    ratio_desc: str
    target_op: str  # '<=' or '>='
    target: float
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The machine's limit for this figure, measured in the same run (`benchmarks.machine_limit`), and where the
    # ntl-jax figure stands against it; "" where no machine limit applies (a ratio of two ntl-jax programs).
    machine_limit: str = ""

    @property
    def met(self) -> bool:
        return self.ratio <= self.target if self.target_op == "<=" else self.ratio >= self.target

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "met": self.met}


# ----------------------------------------------------------------------------------------------- models
@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A random Qwen2-layout decoder (q/k/v bias, GQA, RoPE, RMSNorm, SwiGLU)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tie: bool = False

    def describe(self) -> str:
        return (f"width {self.hidden}, {self.layers} layers, {self.heads} heads / {self.kv_heads} kv, "
                f"MLP {self.intermediate}, vocab {self.vocab}")


BENCH_VOCAB = 8192
TINY = ModelSpec("tiny", hidden=128, layers=4, heads=4, kv_heads=2, intermediate=512, vocab=BENCH_VOCAB)
MID = ModelSpec("mid", hidden=512, layers=8, heads=8, kv_heads=2, intermediate=2048, vocab=BENCH_VOCAB)
MICRO = ModelSpec("micro", hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, vocab=256)  # smoke scale


def model_config(spec: ModelSpec, *, eos_id: int | None = None, pad_id: int | None = None,
                 bos_id: int | None = None):
    from ntl_jax.models.config import ModelConfig

    return ModelConfig(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                       num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                       num_key_value_heads=spec.kv_heads, tie_word_embeddings=spec.tie, attention_bias=True,
                       max_position_embeddings=2048, model_type="qwen2", rope_theta=10000.0, rms_norm_eps=1e-6,
                       eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=bos_id)


def random_model(spec: ModelSpec, *, seed: int = 0, eos_id: int | None = None, pad_id: int | None = None,
                 bos_id: int | None = None, silence_token: int | None = None):
    """A random CausalLM. `silence_token`: zero its LM-head column so its logit is exactly 0 and greedy decoding
    (argmax over thousands of random logits, the largest of which is positive) never emits it."""
    from flax import nnx

    from ntl_jax.models.decoder import CausalLM

    model = CausalLM(model_config(spec, eos_id=eos_id, pad_id=pad_id, bos_id=bos_id), rngs=nnx.Rngs(seed))
    if silence_token is not None:
        if spec.tie:
            raise ValueError(f"silence_token={silence_token} needs an untied LM head; spec {spec.name} is tied")
        model.lm_head[...] = model.lm_head[...].at[:, silence_token].set(0.0)
    return model


def save_random_checkpoint(spec: ModelSpec, directory: str, *, seed: int = 0, tokenizer: Any = None,
                           **kwargs: Any) -> str:
    """Write a random model (ntl-jax `save_pretrained`: HF safetensors + config.json) that both sides load."""
    from ntl_jax.models.hf_io import save_pretrained

    save_pretrained(random_model(spec, seed=seed, **kwargs), directory, tokenizer=tokenizer)
    return directory


def param_count(spec: ModelSpec) -> dict[str, int]:
    """Parameters by group: `matmul` = every weight that multiplies activations (LM head included, embedding
    lookup excluded when untied), used by the 6*N*tokens FLOP count."""
    d, f, v = spec.hidden, spec.intermediate, spec.vocab
    dh = d // spec.heads
    attn = d * spec.heads * dh * 2 + d * spec.kv_heads * dh * 2
    mlp = 3 * d * f
    body = spec.layers * (attn + mlp)
    return {"body": body, "lm_head": d * v, "embedding": d * v, "matmul": body + d * v}

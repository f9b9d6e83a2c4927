"""Run N real JAX CPU processes on localhost (jax.distributed over gloo) and collect one JSON result from each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(port: int, process_id: int, num_processes: int, devices_per_process: int) -> dict[str, str]:
    """A clean environment: ntl-jax's multi-host variables, CPU platform, simulated devices per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "NTL_JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
               NTL_JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", NTL_JAX_NUM_PROCESSES=str(num_processes),
               NTL_JAX_PROCESS_ID=str(process_id), PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return env


def run_workers(script_text: str, tmp_path: Path, *, num_processes: int, devices_per_process: int,
                timeout_s: float, args: tuple[str, ...] = ()) -> list[dict]:
    """Start the script once per process; each must exit 0 and print exactly one ``RESULT <json>`` line."""
    script = tmp_path / "worker.py"
    script.write_text(script_text)
    port = free_port()
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, str(script), *args],
                              env=worker_env(port, i, num_processes, devices_per_process),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(num_processes)]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, timeout_s - (time.monotonic() - start)))
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    results = []
    for rc, out, err in outputs:
        assert rc == 0, f"worker failed (rc={rc}):\n{err[-4000:]}"
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert len(lines) == 1, out
        results.append(json.loads(lines[0][len("RESULT "):]))
    return results

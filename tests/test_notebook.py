"""notebooks/ntl_ppo_colab.ipynb: well-formed and parameterisable (fast), and it runs headless on CPU (slow)."""

from __future__ import annotations

import ast
import json
import os
import re

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO_ROOT, "notebooks", "ntl_ppo_colab.ipynb")
QUICK_ENV = "NTL_JAX_NOTEBOOK_QUICK"
OUTPUT_ENV = "NTL_JAX_NOTEBOOK_OUTPUT"


def _load() -> dict:
    with open(NOTEBOOK, encoding="utf-8") as f:
        return json.load(f)


def _code_cells(nb: dict) -> list[dict]:
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_notebook_is_clean_valid_python_with_a_parameters_cell():
    nb = _load()
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
    cells = _code_cells(nb)
    assert len(cells) >= 5
    for cell in cells:
        ast.parse(_source(cell))  # no shell magics: the notebook runs under plain nbclient too
        assert cell.get("outputs", []) == [] and cell.get("execution_count") is None, "commit the notebook cleared"
    parameters = [cell for cell in cells if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(parameters) == 1
    source = _source(parameters[0])
    assert QUICK_ENV in source and OUTPUT_ENV in source
    everything = "\n".join(_source(cell) for cell in cells)
    # Trains both modes through the CLI's functions and plots the three curves from metrics.jsonl.
    for needed in ("parse_gin", "build_experiment", "run_experiment", '"standard"', '"ntl_final"',
                   "critic/score/mean", "val-core/arithmetic/acc/mean@1", "ntl/loss", "read_metrics_jsonl"):
        assert needed in everything, needed
    # matplotlib is installed by the notebook, never required by the package.
    assert re.search(r"pip.*install.*matplotlib", everything)


@pytest.mark.slow  # two short trainings (warm start + 2 PPO steps each): ~2 min on 2 CPU cores
def test_notebook_executes_headless_on_cpu(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="needs nbformat (test extra: nbclient nbformat ipykernel)")
    nbclient = pytest.importorskip("nbclient", reason="needs nbclient (test extra: nbclient nbformat ipykernel)")
    pytest.importorskip("ipykernel", reason="needs ipykernel (test extra: nbclient nbformat ipykernel)")
    pytest.importorskip("matplotlib", reason="needs matplotlib (test extra) for the notebook's plots")

    monkeypatch.setenv(QUICK_ENV, "1")
    monkeypatch.setenv(OUTPUT_ENV, str(tmp_path / "runs"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device in the kernel, not the test suite's eight
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.join(REPO_ROOT, "notebooks")}})
    client.execute()

    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "QUICK=True: 2 PPO steps per run" in text
    assert "standard PPO, held-out accuracy before -> after PPO:" in text
    assert "PPO + NTL (final answer), held-out accuracy before -> after PPO:" in text
    images = [output for output in outputs if output.output_type == "display_data" and "image/png" in output.data]
    assert len(images) == 1
    for run in ("standard", "ntl_final"):
        lines = (tmp_path / "runs" / run / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert max(r["step"] for r in records) == 2
    ntl_records = [json.loads(line) for line in (tmp_path / "runs" / "ntl_final" / "metrics.jsonl").read_text()
                   .splitlines()]
    assert any("ntl/loss" in r for r in ntl_records)
    standard_records = [json.loads(line) for line in (tmp_path / "runs" / "standard" / "metrics.jsonl").read_text()
                        .splitlines()]
    assert not any("ntl/loss" in r for r in standard_records)

"""The package's shape, as the developers' guide and docs state it: small modules, a pure ``ntl/``, CPU tuning
in one place that the configuration does not pull in, and module-level imports without cycles."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ntl_jax"
MAX_LINES = 500


def _modules() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: pathlib.Path, *, top_level_only: bool) -> set[str]:
    """The ntl_jax modules ``path`` imports (all of them, or only those imported at module level)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    modules = _modules()
    return {name for name in found if name in modules}


def test_no_module_is_over_500_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_ntl_core_is_pure():
    """ntl_jax.ntl needs only itself, the answer readers and the config helpers: no models, PPO or distributed."""
    allowed = ("ntl_jax.ntl", "ntl_jax.answers", "ntl_jax.knobs")
    for name, path in _modules().items():
        if name.startswith("ntl_jax.ntl"):
            outside = {m for m in _imports(path, top_level_only=False) if not m.startswith(allowed)}
            assert not outside, (name, outside)


def test_cpu_tuning_lives_in_one_package_that_the_configuration_does_not_load():
    """Only the sampler (decode compiler options) and the entry point (huge pages) use the tuning code; the
    configuration reads the one constant it validates from ``ntl_jax.cpu`` itself."""
    users = {name for name, path in _modules().items() if not name.startswith("ntl_jax.cpu")
             and any(m.startswith("ntl_jax.cpu.") for m in _imports(path, top_level_only=False))}
    assert users == {"ntl_jax.models.sampler", "ntl_jax.train"}, users
    config_imports = _imports(_modules()["ntl_jax.ppo.config"], top_level_only=False)
    assert not {m for m in config_imports if m.startswith("ntl_jax.cpu.")}, config_imports


def test_module_level_imports_have_no_cycles():
    modules = _modules()
    graph = {name: {m for m in _imports(path, top_level_only=True) if m != name and not name.startswith(m + ".")}
             for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph.get(name, ())):
            assert state.get(dep) != 1, " -> ".join(path + [name, dep])
            if dep not in state:
                visit(dep, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_the_trainer_starts_no_worker_pool_when_built(tmp_path):
    """Ray pools (samplers, reward actors) start on first use: building a trainer with both on Ray starts none."""
    import ray

    from tests.test_reliability_support import build_trainer
    from tests.trainer_fixtures import make_tiny_policy, tiny_experiment, with_trainer

    policy = make_tiny_policy(str(tmp_path / "policy"))
    config = with_trainer(tiny_experiment(str(tmp_path / "run")), reward_runner="ray", rollout_mode="ray")
    was_running = ray.is_initialized()
    trainer = build_trainer(config, policy)
    try:
        assert trainer.runtime._rollout is None and trainer.runtime._reward_runner is None
        assert ray.is_initialized() == was_running
    finally:
        trainer.close()

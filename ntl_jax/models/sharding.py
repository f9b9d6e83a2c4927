"""Logical axis names -> mesh axes (data, fsdp, tensor), and NamedSharding trees for nnx States.

Parameters name their dimensions with logical axes in `out_sharding` metadata (decoder.py). A rule maps a logical name
to a mesh axis, a tuple of mesh axes, or None (replicated). When building a NamedSharding for a concrete array, mesh
axes that are absent from the mesh, already used by an earlier dimension, or that do not divide the dimension are
dropped (that dimension is replicated over them) so any model shape runs on any mesh.
"""
from __future__ import annotations

import contextvars
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]] | Mapping[str, MeshAxes]

LOGICAL_AXIS_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("seq", None),
)


def _rules_dict(rules: Rules | None) -> dict[str, MeshAxes]:
    rules = LOGICAL_AXIS_RULES if rules is None else rules
    return dict(rules.items() if isinstance(rules, Mapping) else rules)


def logical_to_mesh(spec: Sequence[str | None] | None, rules: Rules | None = None) -> PartitionSpec:
    """('embed', 'mlp') -> PartitionSpec('fsdp', 'tensor') under `rules`; None entries stay None (replicated)."""
    table = _rules_dict(rules)
    if spec is None:
        return PartitionSpec()
    mesh_axes = []
    for name in spec:
        if name is not None and name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; allowed: {sorted(table)}")
        mesh_axes.append(None if name is None else table[name])
    return PartitionSpec(*mesh_axes)


def fit_spec_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes that are missing from `mesh`, reused, or do not divide their dimension."""
    used: set[str] = set()
    fitted = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
        kept = []
        for axis in axes:
            size = mesh.shape.get(axis)
            if size is None or axis in used or dim % (int(np.prod([mesh.shape[a] for a in kept])) * size):
                continue
            kept.append(axis)
        used.update(kept)
        fitted.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
    return PartitionSpec(*fitted)


def named_sharding(logical_axes: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                   rules: Rules | None = None) -> NamedSharding:
    """NamedSharding for one array of `shape` whose dimensions have the given logical names."""
    return NamedSharding(mesh, fit_spec_to_shape(logical_to_mesh(logical_axes, rules), shape, mesh))


def _logical_axes(var: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names a parameter was declared with (`out_sharding` metadata), or None."""
    return var.get_metadata().get("out_sharding")


def _variable_sharding(var: nnx.Variable, mesh: Mesh, rules: Rules | None) -> nnx.Variable:
    return var.replace(named_sharding(_logical_axes(var), np.shape(var.get_value()), mesh, rules))


def state_shardings(state: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """Same tree as `state` (nnx State or any pytree of Variables / arrays) with NamedSharding leaves.

    Variables without logical names and plain arrays (e.g. optimizer step counters) are replicated.
    """
    def one(x):
        if isinstance(x, nnx.Variable):
            return _variable_sharding(x, mesh, rules)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_state(state: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """Place every leaf of `state` with its `state_shardings` NamedSharding."""
    return jax.device_put(state, state_shardings(state, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int, rules: Rules | None = None) -> NamedSharding:
    """Sharding for a [B, ...] host batch: leading dim on the 'batch' rule (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, logical_to_mesh(("batch",) + (None,) * (ndim - 1), rules))


# The mesh whose data-parallel axes pin activations while a step is traced (set by `sharded_activations`).
_ACTIVATION_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("activation_mesh", default=None)


def sharded_activations(mesh: Mesh | None, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` traced with its activations' batch dimension pinned to the mesh's (data, fsdp) axes.

    Without the pin, XLA's partitioner may keep an fsdp-sharded weight in place and gather the *batch* instead,
    computing every layer on the global batch with all-reduced partial sums: for Qwen2.5-7B on 8 devices that is a
    [65536, 18944] float32 MLP activation (5 GB) per device. Pinned, each device keeps its rows and gathers weights,
    which is what fsdp means.
    """
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        token = _ACTIVATION_MESH.set(mesh)
        try:
            return fn(*args, **kwargs)
        finally:
            _ACTIVATION_MESH.reset(token)

    return wrapped


def constrain_batch(x: jax.Array) -> jax.Array:
    """Pin ``x``'s leading (batch) dimension to the data-parallel axes inside `sharded_activations`; else ``x``."""
    mesh = _ACTIVATION_MESH.get()
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(("batch",) + (None,) * (x.ndim - 1), x.shape, mesh))


def constrain_stacked_layers(stacked: Any) -> Any:
    """Inside `sharded_activations`, pin layer-stacked weights [L, ...] like one layer's weights, L replicated.

    Without it the stack of fsdp-sharded weights has no declared layout and the partitioner may gather it whole.
    """
    mesh = _ACTIVATION_MESH.get()
    if mesh is None or mesh.size == 1:
        return stacked

    def one(var: nnx.Variable) -> nnx.Variable:
        value = var.get_value()
        axes = _logical_axes(var) or (None,) * (value.ndim - 1)
        sharding = named_sharding(("layers",) + tuple(axes), value.shape, mesh)
        return var.replace(jax.lax.with_sharding_constraint(value, sharding))

    return jax.tree.map(one, stacked, is_leaf=lambda x: isinstance(x, nnx.Variable))

"""Device mesh with axes ('data', 'fsdp', 'tensor') and Auto axis types (logical-rule sharding)."""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(num_devices: int, data: int = -1, fsdp: int = 1, tensor: int = 1) -> tuple[int, int, int]:
    """Replace the (single) -1 by num_devices / product(others); the product must equal num_devices."""
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for name, size in sizes.items():
        if not isinstance(size, (int, np.integer)) or (size != -1 and size < 1):
            raise ValueError(f"mesh {name}={size!r}; allowed: a positive int or -1 (the rest)")
    rest = [name for name, size in sizes.items() if size == -1]
    if len(rest) > 1:
        raise ValueError(f"mesh sizes {sizes} have several -1; allowed: at most one axis set to -1")
    known = int(np.prod([size for size in sizes.values() if size != -1]))
    if num_devices % known:
        raise ValueError(f"mesh sizes {sizes} (product {known}) do not divide the {num_devices} devices")
    if rest:
        sizes[rest[0]] = num_devices // known
    elif known != num_devices:
        raise ValueError(f"mesh sizes {sizes} use {known} devices but {num_devices} are available; "
                         "allowed: a product equal to the device count (or one axis set to -1)")
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh over `devices` (default: all) shaped (data, fsdp, tensor); -1 means "the remaining devices"."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(len(devices), data, fsdp, tensor)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)

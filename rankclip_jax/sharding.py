"""Device mesh and partitioning rules.

The mesh has two axes, ("data", "fsdp"). The batch is split over both (every device sees a distinct
slice of the global batch); parameters are either replicated (plain data parallelism) or, by regex
rules, split along one dimension over "fsdp" (ZeRO-3/FSDP style: XLA gathers them for the forward
pass and reduce-scatters their gradients).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ("data", "fsdp")
POLICIES = ("replicate", "fsdp")


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ("data", "fsdp") mesh from config.mesh.data and config.mesh.fsdp (-1: the rest)."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  data, fsdp = int(mesh_config.data), int(mesh_config.fsdp)
  if data == -1 and fsdp == -1:
    raise ValueError("config.mesh.data and config.mesh.fsdp cannot both be -1.")
  if data == -1:
    data = n // fsdp if fsdp > 0 and n % fsdp == 0 else 0
  if fsdp == -1:
    fsdp = n // data if data > 0 and n % data == 0 else 0
  if data <= 0 or fsdp <= 0 or data * fsdp != n:
    raise ValueError(
        f"config.mesh.data={mesh_config.data} x config.mesh.fsdp={mesh_config.fsdp} does not match "
        f"the {n} available devices; set one of them to -1 to use the rest.")
  # Auto axes: GSPMD decides intermediate shardings, which is what the jitted step relies on.
  return jax.make_mesh((data, fsdp), DATA_AXES, axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device of the mesh."""
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def path_str(path) -> str:
  """'image/encoder/block_0/attn/query/kernel' from a jax key path."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def match_rule(name: str, rules: Sequence[tuple[str, Any]]):
  """The value of the first (regex, value) rule whose regex fully matches `name`, else None."""
  for pattern, value in rules:
    if re.fullmatch(pattern, name):
      return value
  return None


def validate_rules(rules: Sequence[tuple[str, str]]):
  for i, rule in enumerate(rules):
    if len(rule) != 2:
      raise ValueError(f"config.sharding.rules[{i}]={rule!r} must be a (regex, policy) pair.")
    pattern, policy = rule
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f"config.sharding.rules[{i}]: bad regex {pattern!r}: {e}") from e
    if policy not in POLICIES:
      raise ValueError(
          f"config.sharding.rules[{i}]: policy {policy!r} is not one of {POLICIES}.")


def _fsdp_spec(shape, fsdp_size: int, min_size: int) -> P:
  """Shard the largest dimension divisible by the fsdp axis size; replicate small arrays."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def param_shardings(abstract_params, mesh: Mesh, rules: Sequence[tuple[str, str]],
                    min_size: int = 2 ** 14):
  """A tree of NamedShardings for `abstract_params` (arrays or ShapeDtypeStructs) from regex rules.

  Each parameter takes the policy of the first rule matching its path ('image/.../kernel');
  parameters that match no rule are replicated. The rules are checked by config validation
  (validate_rules).
  """
  fsdp_size = mesh.shape["fsdp"]

  def spec_for(path, leaf):
    policy = match_rule(path_str(path), rules) or "replicate"
    if policy == "fsdp":
      return NamedSharding(mesh, _fsdp_spec(leaf.shape, fsdp_size, min_size))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(spec_for, abstract_params)


def shardings_like(tree, param_sharding_tree, mesh: Mesh):
  """Shardings for a tree that mirrors the params in places (e.g. optimizer state).

  Any sub-tree with the same structure as the params (Adam's mu and nu) gets the params' shardings;
  everything else (step counters, scalars) is replicated.
  """
  param_struct = jax.tree.structure(param_sharding_tree)

  def is_param_like(x):
    try:
      return jax.tree.structure(x) == param_struct
    except Exception:  # pylint: disable=broad-except
      return False

  def assign(x):
    if is_param_like(x):
      return param_sharding_tree
    return jax.tree.map(lambda _: replicated(mesh), x)

  return jax.tree.map(assign, tree, is_leaf=is_param_like)

"""Mesh construction and regex partitioning rules on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from rankclip_jax import sharding as shd
from rankclip_jax.config_validation import ConfigError, validate_config
from test_train import micro_config


def mesh_cfg(data, fsdp):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp))


def test_eight_devices_available():
  assert jax.device_count() == 8


@pytest.mark.parametrize("data,fsdp,shape", [(-1, 1, (8, 1)), (2, -1, (2, 4)), (1, 8, (1, 8))])
def test_make_mesh(data, fsdp, shape):
  mesh = shd.make_mesh(mesh_cfg(data, fsdp))
  assert (mesh.shape["data"], mesh.shape["fsdp"]) == shape


@pytest.mark.parametrize("data,fsdp", [(3, 1), (-1, 3), (-1, -1), (4, 4)])
def test_bad_mesh_is_a_clear_error(data, fsdp):
  with pytest.raises(ValueError, match="config.mesh"):
    shd.make_mesh(mesh_cfg(data, fsdp))


def test_rules_pick_policies_by_regex_first_match_wins():
  mesh = shd.make_mesh(mesh_cfg(2, 4))
  params = {"image": {"proj": {"kernel": jax.ShapeDtypeStruct((256, 128), jnp.float32)},
                      "ln": {"scale": jax.ShapeDtypeStruct((256,), jnp.float32)}},
            "text": {"emb": jax.ShapeDtypeStruct((1000, 96), jnp.float32)},
            "logit_scale": jax.ShapeDtypeStruct((), jnp.float32)}
  rules = ((r"text/.*", "replicate"), (r".*kernel", "fsdp"), (r".*", "fsdp"))
  s = shd.param_shardings(params, mesh, rules, min_size=100)
  assert s["image"]["proj"]["kernel"].spec == P("fsdp", None)  # largest dim, divisible by 4
  assert s["image"]["ln"]["scale"].spec == P("fsdp")
  assert s["text"]["emb"].spec == P()  # first rule wins
  assert s["logit_scale"].spec == P()  # scalar: nothing to split
  small = shd.param_shardings(params, mesh, rules, min_size=10 ** 6)
  assert small["image"]["proj"]["kernel"].spec == P()  # below min_size stays replicated


def test_fsdp_falls_back_to_a_divisible_dimension():
  mesh = shd.make_mesh(mesh_cfg(1, 8))
  params = {"w": jax.ShapeDtypeStruct((100, 64), jnp.float32),  # 100 % 8 != 0, 64 % 8 == 0
            "v": jax.ShapeDtypeStruct((7, 9), jnp.float32)}
  s = shd.param_shardings(params, mesh, ((".*", "fsdp"),), min_size=1)
  assert s["w"].spec == P(None, "fsdp")
  assert s["v"].spec == P()


@pytest.mark.parametrize("rules,match", [
    (((".*", "shard"),), "policy"),
    ((("(", "fsdp"),), "bad regex"),
])
def test_bad_rules_are_rejected(rules, match):
  with pytest.raises(ValueError, match=match):
    shd.validate_rules(rules)
  # Before any work: config validation reports them as a config error.
  c = micro_config()
  c.sharding.rules = rules
  with pytest.raises(ConfigError, match=f"config.sharding.rules.*{match}"):
    validate_config(c, num_devices=8, process_count=1)


def test_optimizer_state_mirrors_param_shardings():
  import optax
  mesh = shd.make_mesh(mesh_cfg(1, 8))
  params = {"a": jnp.zeros((64, 16)), "b": jnp.zeros((3,))}
  ps = shd.param_shardings(params, mesh, ((".*", "fsdp"),), min_size=1)
  opt_state = jax.eval_shape(optax.adamw(1e-3).init, params)
  os_ = shd.shardings_like(opt_state, ps, mesh)
  adam = os_[0]
  assert adam.mu["a"].spec == P("fsdp", None) and adam.nu["a"].spec == P("fsdp", None)
  assert adam.count.spec == P()

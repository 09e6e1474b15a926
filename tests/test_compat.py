"""rankclip_jax/compat.py: the version switches give one answer whatever the release returns."""

import jax
import jax.numpy as jnp

from rankclip_jax import compat


def test_cost_analysis_is_one_dict_with_the_matmul_flops():
  lowered = jax.jit(lambda a, b: a @ b).lower(jnp.ones((8, 16)), jnp.ones((16, 4)))
  analysis = compat.cost_analysis(lowered)
  assert isinstance(analysis, dict) and analysis["flops"] == 2 * 8 * 16 * 4


def test_cost_analysis_of_a_release_that_returns_a_list():
  class Lowered:  # older JAX: one dict per computation, in a list
    def __init__(self, value):
      self.value = value

    def cost_analysis(self):
      return self.value

  assert compat.cost_analysis(Lowered([{"flops": 3.0}])) == {"flops": 3.0}
  assert compat.cost_analysis(Lowered([])) is None and compat.cost_analysis(Lowered(None)) is None

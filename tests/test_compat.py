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


def test_cost_analysis_where_the_backend_cannot_analyse_a_lowering():
  """JAX's CUDA plugin and TPUs raise NotImplementedError from Lowered.cost_analysis (seen on an
  H200 with jax 0.11.2: no FLOPs, so no MFU); the same HLO is then analysed by the CPU client."""
  lowered = jax.jit(lambda a, b: jnp.tanh(a @ b)).lower(jnp.ones((8, 16)), jnp.ones((16, 4)))

  class PluginLowered:  # the real lowering; only the backend's refusal is simulated
    _lowering = lowered._lowering  # pylint: disable=protected-access

    def cost_analysis(self):
      raise NotImplementedError("Lowered.cost_analysis not implemented on platform 'cuda'.")

  analysis = compat.cost_analysis(PluginLowered())
  assert analysis["flops"] == compat.cost_analysis(lowered)["flops"] >= 2 * 8 * 16 * 4

"""Every switch on library versions, in one place: what differs between the pinned releases
(requirements.txt) and the newer ones a GPU or TPU install brings (e.g. JAX 0.11 with its CUDA
plugin). The rest of the package calls these and never tests a version itself.

Checked with jax 0.10.2, flax 0.12.8, optax 0.2.8 and orbax-checkpoint 0.12.8, the newest releases
PyPI served on 2026-12-02; a switch is added here when a newer release needs one.
"""

from __future__ import annotations

from typing import Any, Optional


def array_handler_saving_one_copy():
  """Orbax's default handler for jax.Array with replica-parallel saving off (each replicated array
  written whole from one copy, not in slices, one per replica; checkpointing.py says why on CPU).
  It needs the array metadata store, which orbax-checkpoint 0.12.8 keeps in a private module: an
  Orbax that moved it gives None (its own default handler stays), never a crash."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  try:
    from orbax.checkpoint._src.metadata import array_metadata_store  # pylint: disable=g-import-not-at-top
    return ocp.type_handlers.ArrayHandler(array_metadata_store=array_metadata_store.Store(),
                                          use_replica_parallel=False)
  except (ImportError, AttributeError, TypeError):  # another Orbax: keep its default
    return None


def cost_analysis(lowered) -> Optional[dict[str, Any]]:
  """XLA's cost analysis of a lowered computation as one dict (None when the backend gives none):
  older JAX releases return a list with one dict per computation, newer ones the dict."""
  try:
    analysis = lowered.cost_analysis()
  except NotImplementedError:  # PJRT plugin backends: JAX's CUDA plugin, TPUs
    analysis = _cost_analysis_on_cpu(lowered)
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return analysis or None


def _cost_analysis_on_cpu(lowered):
  """`Lowered.cost_analysis()` raises NotImplementedError on backends reached through a PJRT plugin
  (seen with JAX 0.11's CUDA plugin on an H200; TPUs' libtpu is such a plugin too): without this,
  no FLOPs and no MFU on exactly the machines where they matter. The analysis is of the HLO before
  optimisation, which does not depend on the backend, so XLA's CPU client (present in every jaxlib)
  analyses the same module. It goes through jaxlib's private `hlo_module_cost_analysis`; a release
  that moves it gives None (no FLOPs), never a crash."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
    module = lowered._lowering.hlo().as_hlo_module()  # pylint: disable=protected-access
    cpu = jax.local_devices(backend="cpu")[0].client
    return _jax.hlo_module_cost_analysis(cpu, module)
  except Exception:  # pylint: disable=broad-except
    return None

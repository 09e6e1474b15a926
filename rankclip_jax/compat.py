"""Every switch on library versions, in one place: what differs between the pinned releases
(requirements.txt) and the newer ones a GPU or TPU install brings (e.g. JAX 0.11 with its CUDA
plugin). The rest of the package calls these and never tests a version itself.

Checked with jax 0.10.2, flax 0.12.8, optax 0.2.8 and orbax-checkpoint 0.12.8, the newest releases
PyPI served on 2026-12-02; a switch is added here when a newer release needs one.
"""

from __future__ import annotations

from typing import Any, Optional


def cost_analysis(lowered) -> Optional[dict[str, Any]]:
  """XLA's cost analysis of a lowered computation as one dict (None when the backend gives none):
  older JAX releases return a list with one dict per computation, newer ones the dict."""
  analysis = lowered.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return analysis or None

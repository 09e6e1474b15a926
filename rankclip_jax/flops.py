"""Model FLOPs of a compiled step and the hardware's peak, for TFLOP/s and MFU logging.

The step's FLOPs come from XLA's cost analysis of the lowered step for the global batch (before
partitioning, so replicated work is not counted once per device). The peak is the dense matrix-multiply peak
of the device kind for the compute dtype, from the vendors' data sheets; `config.peak_tflops`
overrides it (0: use the table; unknown devices, e.g. CPUs, then report no MFU).

    MFU = step FLOPs x steps/s / (peak FLOP/s per device x devices)
"""

from __future__ import annotations

from typing import Optional

import jax

from rankclip_jax import compat

# Dense (no sparsity) peak TFLOP/s per device: (bfloat16, float32 as the MXU/tensor cores run it:
# TF32 on NVIDIA, bf16 passes on TPU).
PEAK_TFLOPS = {
    "H100 SXM": (989.0, 494.0),  # "NVIDIA H100 80GB HBM3"
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.0, 494.0),
    "H200": (989.0, 494.0),
    "GH200": (989.0, 494.0),
    "B200": (2250.0, 1100.0),
    "A100": (312.0, 156.0),
    "L4": (121.0, 60.0),
    "TPU v4": (275.0, 275.0),
    "TPU v5 lite": (197.0, 197.0),  # v5e
    "TPU v5e": (197.0, 197.0),
    "TPU v5p": (459.0, 459.0),
    "TPU v5": (459.0, 459.0),
    "TPU v6 lite": (918.0, 918.0),  # Trillium / v6e
    "TPU v6e": (918.0, 918.0),
}


def peak_flops_per_device(device_kind: str, dtype: str, override_tflops: float = 0.0
                          ) -> Optional[float]:
  """FLOP/s of one device of this kind for `dtype` ("bfloat16" or "float32"), or None if unknown."""
  if override_tflops:
    return override_tflops * 1e12
  kind = device_kind.replace("NVIDIA ", "")
  if "H100" in kind and "PCIe" in kind:
    kind = "H100 PCIe"
  for name in sorted(PEAK_TFLOPS, key=len, reverse=True):  # most specific name first
    if name in kind:
      bf16, f32 = PEAK_TFLOPS[name]
      return (bf16 if dtype == "bfloat16" else f32) * 1e12
  return None


def step_flops(jitted, *args) -> Optional[float]:
  """FLOPs of one call of `jitted(*args)` (arrays or ShapeDtypeStructs), for the whole global
  batch, from XLA's cost analysis of the lowered computation before partitioning: the model's
  FLOPs, independent of the device count (after partitioning, replicated work such as the
  optimizer update would be counted once per device). None when the backend does not say."""
  try:
    analysis = compat.cost_analysis(jitted.lower(*args))
  except Exception:  # pylint: disable=broad-except  (backends differ in what they support)
    return None
  if not analysis or "flops" not in analysis:
    return None
  return float(analysis["flops"])

"""Model defaults that depend on the platform the model runs on (CPU, GPU, TPU).

Three fields of `config.model` change the computation, never the parameters or (beyond round-off)
the numbers, and what is fastest differs between a CPU and an accelerator:
  attention               "auto" | "einsum" | "xla" | "cudnn" (transformer.py SelfAttention)
  recompute_elementwise   None (by platform) | True | False (transformer.py EncoderBlock)
  last_block_pooled_only  None (by platform) | True | False (transformer.py Encoder)
Left at "auto" / None, the value comes from PLATFORM_DEFAULTS for the platform the model is built on
(`jax.default_backend()`), so one config is right on a laptop and on a GPU node. MEASURED says where
each platform's value was measured; an empty entry is a choice not yet measured on that platform
(`python -m benchmarks.accelerator_check` measures every one of them on a GPU: its switch rows and
verdicts), and is then the CPU's choice or the general rule in the comment beside it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax

ATTENTION = ("auto", "einsum", "xla", "cudnn")

PLATFORMS = ("cpu", "gpu", "tpu")

PLATFORM_DEFAULTS: dict[str, dict[str, Any]] = {
    # einsum: the hand-written attention (one fused QKV projection written in the layout the two
    # batched products read). cudnn: cuDNN's fused (flash) attention through
    # jax.nn.dot_product_attention, where it applies (a 16-bit model.dtype; otherwise XLA's
    # implementation of the same function). TPU: XLA's (no cuDNN there; not measured).
    "attention": {"cpu": "einsum", "gpu": "cudnn", "tpu": "xla"},
    "recompute_elementwise": {"cpu": True, "gpu": True, "tpu": True},
    "last_block_pooled_only": {"cpu": True, "gpu": True, "tpu": True},
}

MEASURED: dict[str, dict[str, str]] = {
    "attention": {
        "cpu": "docs/performance.md, Why these defaults: attention on a CPU", "gpu": "", "tpu": ""},
    "recompute_elementwise": {
        "cpu": "docs/performance.md, Why these defaults: recompute_elementwise", "gpu": "",
        "tpu": ""},
    "last_block_pooled_only": {
        "cpu": "docs/performance.md, Why these defaults: the pooled-only last block", "gpu": "",
        "tpu": ""},
}

# cuDNN's fused attention takes 16-bit inputs only.
CUDNN_DTYPES = ("bfloat16", "float16")


def platform_name(platform: Optional[str] = None) -> str:
  """'cpu', 'gpu' or 'tpu' for a JAX platform name (default: the default backend's)."""
  name = (platform or jax.default_backend()).lower()
  return "gpu" if name in ("cuda", "rocm", "gpu") else name


def resolve(model_config: Mapping[str, Any], platform: Optional[str] = None) -> dict[str, Any]:
  """The values a model built from `model_config` on `platform` uses for the fields above: the
  config's own where it sets one, else PLATFORM_DEFAULTS (a platform not in the table gets the
  CPU's, which run anywhere). Raises ValueError for an attention that cannot run there (cudnn off
  a GPU or with a 32-bit model.dtype)."""
  platform = platform_name(platform)
  row = lambda field: PLATFORM_DEFAULTS[field].get(platform, PLATFORM_DEFAULTS[field]["cpu"])  # pylint: disable=unnecessary-lambda-assignment
  out = {}
  for field in ("recompute_elementwise", "last_block_pooled_only"):
    value = model_config.get(field)
    out[field] = row(field) if value is None else bool(value)
  attention = model_config.get("attention", "auto") or "auto"
  if attention not in ATTENTION:
    raise ValueError(f"config.model.attention={attention!r}; choose one of {list(ATTENTION)}.")
  dtype = model_config.get("dtype", "float32")
  if attention == "auto":
    attention = row("attention")
    if attention == "cudnn" and (platform != "gpu" or dtype not in CUDNN_DTYPES):
      attention = "xla"
  elif attention == "cudnn" and platform != "gpu":
    raise ValueError(f"config.model.attention='cudnn' runs on a GPU only (this is a {platform}); "
                     "use 'auto' to pick this platform's attention, or 'xla'.")
  elif attention == "cudnn" and dtype not in CUDNN_DTYPES:
    raise ValueError(f"config.model.attention='cudnn' needs a 16-bit config.model.dtype (cuDNN's "
                     f"fused attention takes bfloat16 or float16), not {dtype!r}: set "
                     "--config.model.dtype=bfloat16, or use 'auto' or 'xla'.")
  out["attention"] = attention
  return out


def describe(model_config: Mapping[str, Any], platform: Optional[str] = None) -> str:
  """One line for the log: each field's value on this platform, and which came from the table."""
  chosen = resolve(model_config, platform)
  parts = []
  for field, value in chosen.items():
    own = model_config.get(field, "auto" if field == "attention" else None)
    parts.append(f"{field}={value}" + (" (platform default)" if own in (None, "auto") else ""))
  return f"model on {platform_name(platform)}: " + ", ".join(parts)

"""OpenCLIP / OpenAI CLIP state dicts <-> our Flax two-tower parameters.

The layouts correspond one to one (both are CLIP): a ViT with a class token, ln_pre and ln_post, a
causal text transformer pooled at the end-of-text token, projections without bias, one logit scale.
What differs is only how each weight is stored:

  torch (open_clip)                                 flax (ours)
  visual.conv1.weight [W, 3, p, p]                  image/patch_embed/kernel [p, p, 3, W]
  visual.class_embedding [W]                        image/cls [W]
  visual.positional_embedding [T, W]                image/pos_embedding [T, W]
  visual.ln_pre / ln_post .weight .bias             image/ln_pre / ln_post  scale bias
  visual.proj [W, E]                                image/proj/kernel [W, E]
  *.transformer.resblocks.i.ln_1 / ln_2             */encoder/block_i/ln_1 / ln_2
  *.attn.in_proj_weight [3W, W] (q; k; v rows)      */attn/{query,key,value}/kernel [W, H, W/H]
  *.attn.in_proj_bias [3W]                          */attn/{query,key,value}/bias [H, W/H]
  *.attn.out_proj.weight [W, W], .bias              */attn/out/kernel [H, W/H, W], bias
  *.mlp.c_fc / c_proj .weight [out, in], .bias      */mlp/fc1 / fc2 kernel [in, out], bias
  token_embedding.weight [V, W]                     text/token_embedding/embedding
  positional_embedding [L, W]                       text/pos_embedding
  ln_final, text_projection [W, E]                  text/ln_final, text/proj/kernel
  logit_scale (log), logit_bias (SigLIP)            logit_scale, logit_bias

A state dict does not store the number of attention heads, the activation or the LayerNorm epsilon:
heads default to width / 64 (every OpenAI and OpenCLIP ViT), the activation must be given
(`quick_gelu` for OpenAI's weights and the `-quickgelu` OpenCLIP models, `gelu` otherwise), and the
epsilon is torch's 1e-5. These settings, with the image size, context length and normalisation,
are written into the converted run's config so the model is used as its source intended.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import numpy as np

from rankclip_jax.errors import UserError
from rankclip_jax.models.transformer import with_layer_layout
from rankclip_jax.models.two_towers import SIZES, TowerSizes

HEAD_WIDTH = 64
TORCH_LN_EPS = 1e-5
# Not weights (OpenAI's archives store these three ints; open_clip's attn_mask is a buffer).
_IGNORED = {"input_resolution", "context_length", "vocab_size", "attn_mask"}


class ConversionError(UserError, ValueError):
  """The weights do not fit our towers; the message names the keys and what differs."""


def _blocks(state: Mapping[str, np.ndarray], prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
  found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
  if found != set(range(len(found))):
    raise ConversionError(f"{prefix}transformer.resblocks: layers {sorted(found)} are not 0..n-1.")
  return len(found)


def infer_spec(state: Mapping[str, np.ndarray], *, act: str,
               image_heads: Optional[int] = None, text_heads: Optional[int] = None,
               ln_eps: float = TORCH_LN_EPS) -> dict:
  """The architecture a CLIP state dict holds: {size, sizes (TowerSizes), image_size,
  context_length, vocab_size, act, ln_eps, logit_bias}. `size` is the name in
  rankclip_jax.models.SIZES when the towers are one of ours (B/32, B/16, L/14, ...), else
  "custom"."""
  unknown = sorted(k for k in state if k not in _IGNORED and not _known_key(k))
  if unknown:
    raise ConversionError(
        "These weights are not a CLIP ViT with the built-in text transformer (open_clip's CLIP "
        f"class); unsupported keys: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}. "
        "Attention-pooled, layer-scaled, convolutional (ResNet) and Hugging Face text towers are "
        "not supported.")
  for key in ("visual.conv1.weight", "visual.positional_embedding", "visual.proj",
              "token_embedding.weight", "positional_embedding", "text_projection", "logit_scale"):
    if key not in state:
      raise ConversionError(f"Missing {key!r}: not an OpenCLIP/OpenAI CLIP ViT state dict.")
  conv = state["visual.conv1.weight"]
  image_width, patch = conv.shape[0], conv.shape[-1]
  grid = int(round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5))
  if grid * grid + 1 != state["visual.positional_embedding"].shape[0]:
    raise ConversionError("visual.positional_embedding is not a square grid plus a class token.")
  text_width = state["ln_final.weight"].shape[0]
  sizes = TowerSizes(
      patch_size=int(patch), image_width=int(image_width),
      image_depth=_blocks(state, "visual."),
      image_heads=int(image_heads or image_width // HEAD_WIDTH),
      text_width=int(text_width), text_depth=_blocks(state, ""),
      text_heads=int(text_heads or text_width // HEAD_WIDTH),
      embed_dim=int(state["visual.proj"].shape[1]))
  for name, width, heads in (("image", sizes.image_width, sizes.image_heads),
                             ("text", sizes.text_width, sizes.text_heads)):
    if heads <= 0 or width % heads:
      raise ConversionError(f"The {name} tower's width {width} does not split into {heads} heads; "
                            f"pass --{name}_heads.")
  named = [n for n, s in SIZES.items() if s == sizes]
  return dict(size=named[0] if named else "custom", sizes=sizes, image_size=grid * int(patch),
              context_length=int(state["positional_embedding"].shape[0]),
              vocab_size=int(state["token_embedding.weight"].shape[0]), act=act,
              ln_eps=float(ln_eps), logit_bias="logit_bias" in state)


_BLOCK_KEYS = ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.in_proj_weight",
               "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
               "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")
_TOP_KEYS = {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
             "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight",
             "visual.ln_post.bias", "visual.proj", "token_embedding.weight",
             "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection",
             "logit_scale", "logit_bias"}


def _known_key(key: str) -> bool:
  if key in _TOP_KEYS:
    return True
  m = re.match(r"(visual\.)?transformer\.resblocks\.\d+\.(.*)$", key)
  return bool(m) and m.group(2) in _BLOCK_KEYS


def _ln(state, key):
  return {"scale": state[key + ".weight"], "bias": state[key + ".bias"]}


def _block_to_flax(state, prefix: str, heads: int) -> dict:
  w_in, b_in = state[prefix + "attn.in_proj_weight"], state[prefix + "attn.in_proj_bias"]
  width = w_in.shape[1]
  attn = {}
  for i, name in enumerate(("query", "key", "value")):
    w = w_in[i * width:(i + 1) * width]  # [out, in]
    attn[name] = {"kernel": w.T.reshape(width, heads, width // heads),
                  "bias": b_in[i * width:(i + 1) * width].reshape(heads, width // heads)}
  attn["out"] = {"kernel": state[prefix + "attn.out_proj.weight"].T.reshape(
      heads, width // heads, width), "bias": state[prefix + "attn.out_proj.bias"]}
  return {"ln_1": _ln(state, prefix + "ln_1"), "ln_2": _ln(state, prefix + "ln_2"), "attn": attn,
          "mlp": {"fc1": {"kernel": state[prefix + "mlp.c_fc.weight"].T,
                          "bias": state[prefix + "mlp.c_fc.bias"]},
                  "fc2": {"kernel": state[prefix + "mlp.c_proj.weight"].T,
                          "bias": state[prefix + "mlp.c_proj.bias"]}}}


def _block_to_torch(block: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
  attn = block["attn"]
  width = attn["query"]["kernel"].shape[0]
  out = {prefix + "attn.in_proj_weight": np.concatenate(
             [np.asarray(attn[n]["kernel"]).reshape(width, width).T
              for n in ("query", "key", "value")]),
         prefix + "attn.in_proj_bias": np.concatenate(
             [np.asarray(attn[n]["bias"]).reshape(width) for n in ("query", "key", "value")]),
         prefix + "attn.out_proj.weight": np.asarray(attn["out"]["kernel"]).reshape(width, width).T,
         prefix + "attn.out_proj.bias": np.asarray(attn["out"]["bias"]),
         prefix + "mlp.c_fc.weight": np.asarray(block["mlp"]["fc1"]["kernel"]).T,
         prefix + "mlp.c_fc.bias": np.asarray(block["mlp"]["fc1"]["bias"]),
         prefix + "mlp.c_proj.weight": np.asarray(block["mlp"]["fc2"]["kernel"]).T,
         prefix + "mlp.c_proj.bias": np.asarray(block["mlp"]["fc2"]["bias"])}
  for ln in ("ln_1", "ln_2"):
    out[f"{prefix}{ln}.weight"] = np.asarray(block[ln]["scale"])
    out[f"{prefix}{ln}.bias"] = np.asarray(block[ln]["bias"])
  return out


def to_flax(state: Mapping[str, np.ndarray], spec: dict) -> dict:
  """A CLIP state dict -> our parameter tree (float32 numpy arrays, one entry per layer; see
  transformer.with_layer_layout for the scanned layout), for the towers of `spec`."""
  state = {k: np.asarray(v, np.float32) for k, v in state.items() if k not in _IGNORED}
  s: TowerSizes = spec["sizes"]
  image = {
      "patch_embed": {"kernel": state["visual.conv1.weight"].transpose(2, 3, 1, 0)},
      "cls": state["visual.class_embedding"],
      "pos_embedding": state["visual.positional_embedding"],
      "ln_pre": _ln(state, "visual.ln_pre"),
      "encoder": {f"block_{i}": _block_to_flax(state, f"visual.transformer.resblocks.{i}.",
                                               s.image_heads) for i in range(s.image_depth)},
      "ln_post": _ln(state, "visual.ln_post"),
      "proj": {"kernel": state["visual.proj"]},
  }
  text = {
      "token_embedding": {"embedding": state["token_embedding.weight"]},
      "pos_embedding": state["positional_embedding"],
      "encoder": {f"block_{i}": _block_to_flax(state, f"transformer.resblocks.{i}.", s.text_heads)
                  for i in range(s.text_depth)},
      "ln_final": _ln(state, "ln_final"),
      "proj": {"kernel": state["text_projection"]},
  }
  params = {"image": image, "text": text, "logit_scale": state["logit_scale"].reshape(())}
  if "logit_bias" in state:
    params["logit_bias"] = state["logit_bias"].reshape(())
  return params


def from_flax(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Our parameter tree (either layer layout) -> an open_clip CLIP state dict (float32 numpy)."""
  params = _to_numpy(with_layer_layout(params, scanned=False))
  image, text = params["image"], params["text"]
  if "patch_embed" not in image or "cls" not in image:
    raise ConversionError("Only ViTs with the linear patch stem (model.stem='patch') and a class "
                          "token (model.pool='cls') have an open_clip counterpart.")
  state = {
      "visual.conv1.weight": image["patch_embed"]["kernel"].transpose(3, 2, 0, 1),
      "visual.class_embedding": image["cls"],
      "visual.positional_embedding": image["pos_embedding"],
      "visual.ln_pre.weight": image["ln_pre"]["scale"], "visual.ln_pre.bias": image["ln_pre"]["bias"],
      "visual.ln_post.weight": image["ln_post"]["scale"],
      "visual.ln_post.bias": image["ln_post"]["bias"],
      "visual.proj": image["proj"]["kernel"],
      "token_embedding.weight": text["token_embedding"]["embedding"],
      "positional_embedding": text["pos_embedding"],
      "ln_final.weight": text["ln_final"]["scale"], "ln_final.bias": text["ln_final"]["bias"],
      "text_projection": text["proj"]["kernel"],
      "logit_scale": np.asarray(params["logit_scale"]).reshape(()),
  }
  if "logit_bias" in params:
    state["logit_bias"] = np.asarray(params["logit_bias"]).reshape(())
  for tower, prefix in ((image, "visual.transformer.resblocks."), (text, "transformer.resblocks.")):
    for i in range(len(tower["encoder"])):
      state.update(_block_to_torch(tower["encoder"][f"block_{i}"], f"{prefix}{i}."))
  return {k: np.array(v, np.float32, order="C") for k, v in state.items()}  # 0-d stays 0-d


def open_clip_config(sizes: TowerSizes, *, image_size: int, context_length: int,
                     vocab_size: int, act: str, ln_eps: float = TORCH_LN_EPS,
                     logit_bias: bool = False) -> dict:
  """open_clip's model config (the JSON of open_clip/model_configs) for these towers. A LayerNorm
  epsilon other than torch's goes into norm_kwargs (it matters: text-token embeddings are small,
  so 1e-6 against 1e-5 moves text embeddings by ~1e-2)."""
  if act not in ("gelu", "quick_gelu"):
    raise ConversionError(f"model.act={act!r} has no open_clip counterpart (gelu or quick_gelu).")
  if sizes.image_width % sizes.image_heads or sizes.text_width % sizes.text_heads:
    raise ConversionError("widths must be multiples of the head counts.")
  cfg = {
      "embed_dim": sizes.embed_dim,
      "quick_gelu": act == "quick_gelu",
      "vision_cfg": {"image_size": image_size, "layers": sizes.image_depth,
                     "width": sizes.image_width, "patch_size": sizes.patch_size,
                     "head_width": sizes.image_width // sizes.image_heads},
      "text_cfg": {"context_length": context_length, "vocab_size": vocab_size,
                   "width": sizes.text_width, "heads": sizes.text_heads,
                   "layers": sizes.text_depth},
  }
  if ln_eps != TORCH_LN_EPS:
    for tower in ("vision_cfg", "text_cfg"):
      cfg[tower]["norm_kwargs"] = {"eps": ln_eps}
  if logit_bias:
    cfg["init_logit_bias"] = -10.0
  return cfg


def settings_from_config(cfg: Mapping[str, Any]) -> dict:
  """What an open_clip model config adds to a state dict: activation, head counts, LayerNorm
  epsilon. Raises ConversionError for towers we do not have (timm or Hugging Face towers,
  attention pooling, non-causal text...)."""
  vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
  unsupported = [k for k in ("timm_model_name", "hf_model_name", "attentional_pool",
                             "no_causal_mask", "proj_bias", "ls_init_value")
                 if vision.get(k) or text.get(k)]
  if cfg.get("custom_text") and text.get("hf_model_name"):
    unsupported.append("custom_text")
  for tower in (vision, text):
    if tower.get("pool_type", "tok" if tower is vision else "argmax") not in ("tok", "argmax"):
      unsupported.append(f"pool_type={tower['pool_type']}")
    if tower.get("mlp_ratio", 4.0) != 4.0:
      unsupported.append(f"mlp_ratio={tower['mlp_ratio']}")
  if unsupported:
    raise ConversionError(f"open_clip config uses {unsupported}: no counterpart in our towers.")
  eps = {(t.get("norm_kwargs") or {}).get("eps", TORCH_LN_EPS) for t in (vision, text)}
  if len(eps) != 1:
    raise ConversionError(f"open_clip config has different LayerNorm epsilons per tower: {eps}.")
  approximate = (text.get("act_kwargs") or {}).get("approximate")
  act = "quick_gelu" if cfg.get("quick_gelu") else ("gelu_tanh" if approximate == "tanh"
                                                    else "gelu")
  image_width, text_width = vision.get("width", 768), text.get("width", 512)
  return dict(act=act, ln_eps=eps.pop(),
              image_heads=image_width // vision.get("head_width", HEAD_WIDTH),
              text_heads=text.get("heads", 8))


def _to_numpy(tree):
  if isinstance(tree, Mapping):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)

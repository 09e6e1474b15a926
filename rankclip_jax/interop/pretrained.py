"""`config.model.init_from`: start training or fine-tuning from existing weights.

The source is one of
  - a run of ours (its workdir, checkpoints/ or checkpoints/<step>), or a model converted by
    `python -m rankclip_jax.convert` (same layout): only its parameters are read;
  - an OpenCLIP / OpenAI CLIP state dict (.safetensors, or .pt/.pth/.bin from torch.save).
Its towers must be the ones config.model describes; when they are not, the error lists the
overrides that make them so. The text position table may be longer than config.context_length (its
first rows are used: causal attention makes that exact for shorter texts). A logit bias that only
one side has is dropped or freshly initialised (SigLIP <-> softmax losses).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging

from rankclip_jax import model_setup
from rankclip_jax.errors import ConfigError
from rankclip_jax.interop import open_clip, tensor_files
from rankclip_jax.models import tower_sizes
from rankclip_jax.models.transformer import is_scanned, with_layer_layout

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def architecture(model_config, image_size: int) -> dict[str, Any]:
  """The config fields (config.model's and config.image_size) that decide the parameters' shapes
  and meaning."""
  sizes = tower_sizes(model_config)
  out = {"image_size": int(image_size), "model.act": model_config.act,
         "model.ln_eps": float(model_config.get("ln_eps", 1e-6)),
         "model.pool": model_config.pool, "model.stem": model_config.stem}
  for field, value in vars(sizes).items():
    out[f"model.custom.{field}"] = value
  return out


def _overrides(source: dict[str, Any], target: dict[str, Any], source_size: str) -> list[str]:
  """--config flags that make the target architecture the source's (empty: they already are)."""
  flags = [f"--config.{k}={v}" for k, v in source.items()
           if not k.startswith("model.custom.") and target.get(k) != v]
  if any(target[k] != v for k, v in source.items() if k.startswith("model.custom.")):
    if source_size != "custom":
      flags.append(f"--config.model.size={source_size}")
    else:
      flags.append("--config.model.size=custom")
      flags += [f"--config.{k}={v}" for k, v in source.items() if k.startswith("model.custom.")]
  return flags


def _check(source: dict[str, Any], target: dict[str, Any], context_length: int, source_size: str,
           path: str, source_context: int):
  flags = _overrides(source, target, source_size)
  if context_length > source_context:  # shorter is fine: the first positions are used
    flags.append(f"--config.context_length={source_context}")
  if flags:
    raise ConfigError(
        f"config.model.init_from={path}: its towers differ from config.model. Add "
        f"{' '.join(flags)}")


def _from_state_dict(path: str, model_config, target: dict[str, Any], context_length: int) -> dict:
  state = tensor_files.read_state_dict(path)
  try:
    # Head counts are not in a state dict: config.model's are taken.
    sizes = tower_sizes(model_config)
    spec = open_clip.infer_spec(state, act=model_config.act, image_heads=sizes.image_heads,
                                text_heads=sizes.text_heads)
  except open_clip.ConversionError as e:
    raise ConfigError(f"config.model.init_from={path}: {e}") from None
  source = {"image_size": spec["image_size"], "model.act": model_config.act,
            "model.ln_eps": spec["ln_eps"], "model.pool": "cls", "model.stem": "patch"}
  source.update({f"model.custom.{k}": v for k, v in vars(spec["sizes"]).items()})
  _check(source, target, context_length, spec["size"], path, spec["context_length"])
  logging.info("init_from %s: OpenCLIP state dict, %s towers, activation %s (a state dict does "
               "not record it: config.model.act)", path, spec["size"], model_config.act)
  return open_clip.to_flax(state, spec)


def _from_run(path: str, target: dict[str, Any], context_length: int) -> dict:
  def check(saved):
    _check(architecture(saved.model, saved.image_size), target, context_length, saved.model.size,
           path, saved.context_length)

  # Onto the host, with the shapes as saved (the context length may differ from ours).
  _, _, params, step = model_setup.restore_run(
      path, device=jax.local_devices(backend="cpu")[0], check=check)
  logging.info("init_from %s: step %d of that run", path, step)
  return jax.tree.map(np.asarray, params)


def load(init_from: str, *, model_config, image_size: int, context_length: int,
         abstract_params) -> dict[tuple[str, ...], np.ndarray]:
  """The weights at `init_from` (config.model.init_from) fitted to `abstract_params` (the shapes
  of the parameters of the model that model_config, image_size and context_length describe):
  {parameter path: array}. Parameters missing from the result keep their fresh initialisation
  (only ever the logit bias)."""
  target = architecture(model_config, image_size)
  path = os.path.abspath(os.path.expanduser(init_from))
  if os.path.isfile(path):
    if not path.endswith(STATE_DICT_SUFFIXES):
      raise ConfigError(f"config.model.init_from={path}: a file, but not a state dict "
                        f"({', '.join(STATE_DICT_SUFFIXES)}); or give a run's workdir.")
    loaded = _from_state_dict(path, model_config, target, context_length)
  elif os.path.isdir(path):
    loaded = _from_run(path, target, context_length)
  else:
    raise ConfigError(f"config.model.init_from={path}: no such file or directory.")
  return fit(loaded, abstract_params, path)


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  if isinstance(tree, dict) or hasattr(tree, "items"):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (str(k),)))
    return out
  return {prefix: tree}


def fit(loaded, abstract_params, path: str) -> dict[tuple[str, ...], np.ndarray]:
  # Per-layer or scanned (stacked) blocks, whichever the model being trained uses.
  loaded = with_layer_layout(loaded, scanned=is_scanned(abstract_params))
  have, want = _flatten(loaded), _flatten(abstract_params)
  out, problems = {}, []
  for key, target in want.items():
    name = "/".join(key)
    if key not in have:
      if key == ("logit_bias",):
        logging.warning("init_from %s has no logit bias; it starts at config.model.init_bias.",
                        path)
        continue
      problems.append(f"{name} is missing")
      continue
    value = np.asarray(have[key], np.float32)
    if key == ("text", "pos_embedding") and value.shape[0] > target.shape[0]:
      value = value[:target.shape[0]]  # a longer context than config.context_length
    if value.shape != tuple(target.shape):
      problems.append(f"{name} has shape {value.shape}, the model wants {tuple(target.shape)}")
      continue
    out[key] = value.astype(target.dtype)
  extra = sorted("/".join(k) for k in have if k not in want)
  if extra == ["logit_bias"]:
    logging.warning("init_from %s has a logit bias this loss does not use; dropped.", path)
  elif extra:
    problems.append(f"parameters the model does not have: {extra[:6]}")
  if problems:
    raise ConfigError(f"config.model.init_from={path} does not fit config.model: "
                      + "; ".join(problems[:6]) + (" ..." if len(problems) > 6 else "")
                      + ". Check config.context_length, config.model.size and the loss.")
  return out

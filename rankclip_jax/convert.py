r"""Convert weights between OpenCLIP / OpenAI CLIP and rankclip_jax.

Import: an OpenCLIP/OpenAI state dict -> a rankclip_jax model directory (an Orbax checkpoint at
step 0 plus the config that says how to use it: towers, activation, LayerNorm epsilon, image size,
context length). `rankclip_jax.load(DIR)`, `python -m rankclip_jax.evaluate --workdir=DIR` and
`--config.model.init_from=DIR` then use it.

    python -m rankclip_jax.convert --input=open_clip_model.safetensors --output=runs/b32_laion \
        --act=gelu
    python -m rankclip_jax.convert --input=ViT-B-32_openai_state_dict.pt --output=runs/b32_openai \
        --act=quick_gelu

A state dict does not record the activation: OpenAI's weights and OpenCLIP's `-quickgelu` models
use quick_gelu, the other OpenCLIP models gelu. It must be given (--act, or --open_clip_config with
the model's open_clip JSON), since a wrong one gives plausible-looking but wrong embeddings.

Export: a run (latest checkpoint, or --step) -> an open_clip state dict (.safetensors) plus its
open_clip model config (same name, .json):

    python -m rankclip_jax.convert --input=runs/demo --output=demo.safetensors

    # in PyTorch:
    import json, open_clip
    from safetensors.torch import load_file
    model = open_clip.CLIP(**json.load(open("demo.json")))
    model.load_state_dict(load_file("demo.safetensors"))

Only ViTs with CLIP's linear patch stem and class-token pooling have an open_clip counterpart.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import jax
import numpy as np
from absl import flags

from rankclip_jax import checkpointing, cli, defaults, model_setup
from rankclip_jax.errors import USER_ERRORS, ConfigError
from rankclip_jax.interop import open_clip, tensor_files
from rankclip_jax.interop.pretrained import STATE_DICT_SUFFIXES
from rankclip_jax.models import tower_sizes


def import_state_dict(path: str, output: str, *, act: Optional[str] = None,
                      image_heads: Optional[int] = None, text_heads: Optional[int] = None,
                      context_length: Optional[int] = None,
                      open_clip_config: Optional[str] = None) -> str:
  """Writes `output` (a model directory) from the state dict at `path`; returns its checkpoint
  directory. `open_clip_config`: the model's open_clip JSON, which gives the activation, head
  counts and LayerNorm epsilon (explicit arguments win)."""
  ln_eps = open_clip.TORCH_LN_EPS
  if open_clip_config:
    with open(open_clip_config) as f:
      settings = open_clip.settings_from_config(json.load(f))
    act = act or settings["act"]
    image_heads = image_heads or settings["image_heads"]
    text_heads = text_heads or settings["text_heads"]
    ln_eps = settings["ln_eps"]
  if not act:
    raise ConfigError("--act is required for an import: quick_gelu for OpenAI's weights and "
                      "OpenCLIP's -quickgelu models, gelu for the other OpenCLIP models (a "
                      "state dict does not record it; --open_clip_config does).")
  from rankclip_jax.models.transformer import ACTIVATIONS  # pylint: disable=g-import-not-at-top
  if act not in ACTIVATIONS:
    raise ConfigError(f"--act={act!r}; choose one of {sorted(ACTIVATIONS)} (OpenAI weights: "
                      "quick_gelu).")
  state = tensor_files.read_state_dict(path)
  spec = open_clip.infer_spec(state, act=act, image_heads=image_heads, text_heads=text_heads,
                              ln_eps=ln_eps)
  params = open_clip.to_flax(state, spec)
  config = defaults.base_config()
  config.model.size = spec["size"]
  if spec["size"] == "custom":
    config.model.custom.update(vars(spec["sizes"]))
  config.model.act = act
  config.model.ln_eps = spec["ln_eps"]
  config.image_size = spec["image_size"]
  config.context_length = context_length or spec["context_length"]
  if config.context_length > spec["context_length"]:
    raise ConfigError(f"--context_length={config.context_length} is longer than the "
                      f"{spec['context_length']} positions the weights have.")
  params["text"]["pos_embedding"] = params["text"]["pos_embedding"][:config.context_length]
  config.model.init_scale = float(np.exp(params["logit_scale"]))
  if spec["logit_bias"]:
    config.loss.name = "siglip"
    config.loss.cross_weight = config.loss.inmodal_weight = 0.0
    config.model.init_bias = float(params["logit_bias"])
  config.evals = {}
  output = os.path.abspath(output)
  if os.path.exists(os.path.join(output, "checkpoints")):
    raise FileExistsError(f"{output}/checkpoints exists; choose a new --output.")
  ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(output), read_only=False,
                                    every_steps=1, keep=1, async_save=False)
  ckpt.save(0, {"params": params}, config_dict=json.loads(config.to_json_best_effort()),
            force=True)
  ckpt.close()
  with open(os.path.join(output, "converted_from.json"), "w") as f:
    json.dump({"source": os.path.abspath(path), "size": spec["size"],
               "sizes": vars(spec["sizes"]), "act": act, "ln_eps": spec["ln_eps"],
               "image_size": spec["image_size"], "context_length": config.context_length},
              f, indent=2)
  return checkpointing.checkpoint_dir(output)


def export_run(run: str, output: str, *, step: Optional[int] = None) -> tuple[str, str]:
  """Writes the run's parameters as an open_clip state dict (`output`, .safetensors) and its
  open_clip model config (same name, .json). Returns both paths."""
  if not output.endswith(".safetensors"):
    raise ConfigError(f"--output={output}: export writes a .safetensors file.")
  def check(config):
    if config.model.stem != "patch" or config.model.pool != "cls":
      raise ConfigError(
          f"{run}: model.stem={config.model.stem!r}, model.pool={config.model.pool!r}; open_clip's "
          "ViT has a linear patch stem and class-token pooling (stem='patch', pool='cls').")

  config, setup, params, step = model_setup.restore_run(
      run, step=step, device=jax.local_devices(backend="cpu")[0], check=check)
  model_cfg = open_clip.open_clip_config(
      tower_sizes(config.model), image_size=config.image_size,
      context_length=config.context_length, vocab_size=setup.model.vocab_size, act=config.model.act,
      ln_eps=float(config.model.get("ln_eps", 1e-6)), logit_bias="logit_bias" in params)
  tensor_files.write_safetensors(output, open_clip.from_flax(params), metadata={
      "format": "pt", "source": f"rankclip_jax run {os.path.abspath(run)} step {step}"})
  json_path = os.path.splitext(output)[0] + ".json"
  with open(json_path, "w") as f:
    json.dump(model_cfg, f, indent=2)
  return output, json_path


_STEP = cli.step_flag()
_INPUT = flags.DEFINE_string(
    "input", None, "A state dict (.safetensors/.pt/.pth/.bin) to import, or a run (workdir, "
    "checkpoints/ or checkpoints/<step>) to export.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Import: the model directory to write. Export: the .safetensors file (its "
    "open_clip config goes beside it as .json).")
_ACT = flags.DEFINE_string("act", None, "Import: the activation, quick_gelu (OpenAI weights, "
                           "OpenCLIP -quickgelu models) or gelu (other OpenCLIP models).")
_IMAGE_HEADS = flags.DEFINE_integer("image_heads", None, "Import: image attention heads "
                                    "(default: width / 64).")
_TEXT_HEADS = flags.DEFINE_integer("text_heads", None, "Import: text attention heads "
                                   "(default: width / 64).")
_CONTEXT = flags.DEFINE_integer("context_length", None, "Import: keep this many text positions "
                                "(default: all of them, 77 for CLIP).")
_OPEN_CLIP_CONFIG = flags.DEFINE_string(
    "open_clip_config", None, "Import: the model's open_clip config JSON (open_clip's "
    "model_configs/<name>.json, or the .json an export writes): activation, heads, LayerNorm "
    "epsilon.")


def main(argv):
  cli.start(argv)
  for flag in (_INPUT, _OUTPUT):  # cli.run checks them; this is for a main run some other way
    if not flag.value:
      cli.usage_error(f"--{flag.name} is required.")
  try:
    if os.path.isfile(_INPUT.value):
      if not _INPUT.value.endswith(STATE_DICT_SUFFIXES):
        raise ConfigError(f"--input={_INPUT.value}: not a state dict "
                          f"({', '.join(STATE_DICT_SUFFIXES)}) nor a run directory.")
      out = import_state_dict(_INPUT.value, _OUTPUT.value, act=_ACT.value,
                              image_heads=_IMAGE_HEADS.value, text_heads=_TEXT_HEADS.value,
                              context_length=_CONTEXT.value,
                              open_clip_config=_OPEN_CLIP_CONFIG.value)
      print(f"Wrote {out}/0. Use it with rankclip_jax.load({_OUTPUT.value!r}), "
            f"python -m rankclip_jax.evaluate --workdir={_OUTPUT.value}, or "
            f"--config.model.init_from={_OUTPUT.value}.")
    else:
      weights, model_json = export_run(_INPUT.value, _OUTPUT.value, step=_STEP())
      print(f"Wrote {weights} and its open_clip model config {model_json}.")
  except USER_ERRORS + (FileNotFoundError, FileExistsError) as e:
    raise SystemExit(f"Error: {e}") from None


def run():
  """The `rankclip-convert` command (a command-line mistake: one `Error:` line, exit status 2)."""
  cli.run(main, required=["input", "output"])


if __name__ == "__main__":
  run()

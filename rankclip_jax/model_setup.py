"""What every use of a trained or training model needs, built once from a config: the device mesh,
the Flax two-tower model, the tokenizer, the parameters' shapes and shardings, and the restore of
parameters from a checkpoint. The trainer (train.py) adds the optimizer and the step to it;
evaluation (evaluate.py) and notebooks (inference.py) use it as it is.

    setup = ModelSetup(config)                       # mesh from config.mesh
    setup = ModelSetup.on_device(config, device)     # one device, whatever mesh trained it
    params = setup.restore_params(checkpointer, step)
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from rankclip_jax import checkpointing
from rankclip_jax import sharding as shd
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.evaluation import evaluators as evals_lib
from rankclip_jax.evaluation.embed import Embedder
from rankclip_jax.losses import LOSSES
from rankclip_jax.models import build_model


def init_params(model, rng, *, image_size: int, context_length: int):
  """A random initialisation of `model`'s parameters (traced on one dummy example)."""
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  tokens = jnp.zeros((1, context_length), jnp.int32)
  return model.init(rng, images, tokens)["params"]


class ModelSetup:
  """The mesh, model, tokenizer and parameter shardings of a config (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, *, mesh=None):
    self.config = config
    self.mesh = shd.make_mesh(config.mesh) if mesh is None else mesh
    self.tokenizer = ClipTokenizer(config.context_length)
    self.model = build_model(config.model, context_length=config.context_length,
                             logit_bias=LOSSES.get(config.loss.name).has_bias)
    self.abstract_params = jax.eval_shape(self.init_params, jax.random.key(0))
    self.param_shardings = shd.param_shardings(self.abstract_params, self.mesh,
                                               config.sharding.rules,
                                               min_size=config.sharding.fsdp_min_size)

  @classmethod
  def on_device(cls, config, device: Optional[jax.Device] = None) -> "ModelSetup":
    """On one device (default: the first local one): a 1 x 1 mesh."""
    one = ml_collections.ConfigDict(dict(data=1, fsdp=1))
    return cls(config, mesh=shd.make_mesh(one, [device or jax.local_devices()[0]]))

  def init_params(self, rng):
    """Random parameters (unsharded: call it inside jit with out_shardings=param_shardings)."""
    return init_params(self.model, rng, image_size=self.config.image_size,
                       context_length=self.config.context_length)

  def restore_params(self, ckpt: checkpointing.Checkpointer, step: Optional[int] = None):
    """Only the parameters of checkpoint `step` (default: latest), onto this mesh, whatever mesh
    wrote them (Orbax reshards on restore)."""
    return ckpt.restore_params(checkpointing.abstract_with_shardings(
        self.abstract_params, self.param_shardings), step)

  def place(self, loaded: dict, fresh):
    """{parameter path: numpy array} (e.g. config.model.init_from's weights) onto the mesh, in the
    layout of `fresh` (parameters with their shardings); paths `loaded` lacks keep `fresh`'s."""
    def put(path, value):
      key = tuple(getattr(p, "key", getattr(p, "name", None)) for p in path)
      if key not in loaded:
        return value  # the few parameters the source lacks (a logit bias) keep their init
      array = loaded[key]
      return jax.make_array_from_callback(array.shape, value.sharding, lambda idx: array[idx])
    return jax.tree_util.tree_map_with_path(put, fresh)

  def embedder(self) -> Embedder:
    return Embedder(self.model, self.mesh)

  def evaluators(self, evals=None) -> evals_lib.Evaluators:
    """The evaluators of config.evals (or of `evals`), opened: a missing evaluation set is an error
    here, before any work."""
    c = self.config
    return evals_lib.build_evaluators(
        c.evals if evals is None else evals, tokenizer=self.tokenizer, image_size=c.image_size,
        batch_size=c.eval_batch_size, eval_data_dir=c.data.get("eval_data_dir", ""),
        every_steps=c.eval_every_steps)


def restore_run(path: str, *, step: Optional[int] = None, device: Optional[jax.Device] = None,
                check: Optional[Callable[[ml_collections.ConfigDict], None]] = None):
  """(config, setup, params, step) of a run's checkpoint (`step`, or the newest readable one: a
  damaged latest checkpoint is skipped with a warning, see Checkpointer.newest_readable): its saved
  config, the ModelSetup it describes on `device` (default: the first local one), and only its
  parameters, whatever mesh wrote them. `check(config)` runs before any parameter is read. The
  run is only read (it may still be training): nothing in it is deleted, moved or created.

  path: a workdir, its checkpoints/ folder, or checkpoints/<step>; or a model converted by
  `python -m rankclip_jax.convert` (the same layout).
  """
  directory, path_step = checkpointing.resolve_run(path)
  # Read-only: the run may still be training, its save in flight (see checkpointing.py).
  ckpt = checkpointing.Checkpointer(directory, read_only=True)

  def read(s):  # config and parameters of one step: a damaged latest one falls back as a whole
    config = ckpt.saved_config(s)
    if check is not None:
      check(config)
    setup = ModelSetup.on_device(config, device)
    return config, setup, setup.restore_params(ckpt, s)

  try:
    step, (config, setup, params) = ckpt.newest_readable(read, path_step if step is None else step)
  finally:
    ckpt.close()
  return config, setup, params, int(step)

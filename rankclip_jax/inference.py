"""Load a trained run into a notebook in one call, and use it on plain numpy / PIL input.

    import rankclip_jax
    m = rankclip_jax.load("runs/demo")            # a workdir, its checkpoints/ or checkpoints/<step>
    img = m.encode_images([pil_image, uint8_array])        # [2, D], L2-normalised
    txt = m.encode_texts(["a red circle.", "a star."])     # [2, D]
    probs = m.classify(images, ["circle", "star"], templates=("a photo of a {}.",))

The parameters are restored onto one local device (no mesh to set up), whatever mesh and sharding
wrote the checkpoint: Orbax reshards on restore.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from rankclip_jax import model_setup
from rankclip_jax.data import images as image_ops
from rankclip_jax.data import pipeline
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.evaluation import embed, metrics


@dataclasses.dataclass
class LoadedModel:
  """A restored model with its parameters, config and tokenizer, and helpers on plain inputs."""
  model: Any
  params: Any
  config: ml_collections.ConfigDict
  tokenizer: ClipTokenizer
  step: int
  batch_size: int = 256

  def __post_init__(self):
    self._image = jax.jit(lambda p, x: self.model.apply({"params": p}, x, method="encode_image"))
    self._text = jax.jit(lambda p, x: self.model.apply({"params": p}, x, method="encode_text"))

  @property
  def logit_scale(self) -> float:
    return float(np.exp(min(float(self.params["logit_scale"]), self.model.logit_scale_max)))

  def preprocess(self, image) -> np.ndarray:
    """PIL image or uint8 / float [H, W, 3] (or [H, W]) array -> normalised float32 [S, S, 3],
    cropped like the evaluation data: shorter side resized to S (bicubic), central S x S."""
    size = self.config.image_size
    if not isinstance(image, Image.Image):
      array = np.asarray(image)
      if array.dtype != np.uint8:
        array = np.clip(np.round(array * (255.0 if array.max() <= 1.0 else 1.0)), 0, 255)
        array = array.astype(np.uint8)
      image = Image.fromarray(array)
    # As in evaluation: transparency over white, shorter side to `size`, central square.
    return pipeline.normalize_image(image_ops.center_crop(image_ops.to_rgb(image), size))

  def encode_images(self, images: Sequence[Any]) -> np.ndarray:
    """A list of PIL images / arrays, or a uint8 [B, H, W, 3] array -> float32 [B, D] unit rows."""
    batch = np.stack([self.preprocess(im) for im in images])
    return self._batched(self._image, batch)

  def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
    """A list of strings -> float32 [B, D] unit rows (CLIP BPE, the run's context length)."""
    if isinstance(texts, str):
      raise TypeError("encode_texts takes a list of strings; wrap a single caption in [].")
    return self._batched(self._text, np.asarray(self.tokenizer(list(texts))))

  def class_embeddings(self, class_names: Sequence[str],
                       templates: Sequence[str] = ("a photo of a {}.",)) -> np.ndarray:
    """Prompt-ensemble class embeddings [C, D]: each template's embedding normalised, averaged,
    renormalised."""
    prompts = [t.format(c) for t in templates for c in class_names]
    emb = self.encode_texts(prompts).reshape(len(templates), len(class_names), -1)
    return metrics.ensemble_class_embeddings(emb)

  def classify(self, images: Sequence[Any], class_names: Sequence[str],
               templates: Sequence[str] = ("a photo of a {}.",)) -> np.ndarray:
    """Zero-shot class probabilities [B, C]: softmax of the scaled image-class similarities."""
    logits = self.logit_scale * self.encode_images(images) @ self.class_embeddings(
        class_names, templates).T
    return np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))

  def _batched(self, fn, x: np.ndarray) -> np.ndarray:
    """fn on x in chunks of batch_size, each padded to embed.padded_size rows (calls with 5, 6 or
    7 inputs share one compiled program)."""
    chunks = [x[i:i + self.batch_size] for i in range(0, x.shape[0], self.batch_size)]
    out = [np.asarray(fn(self.params, embed.pad_rows(c, embed.padded_size(len(c)))))[:len(c)]
           for c in chunks]
    return np.concatenate(out) if out else np.zeros((0, self.model.sizes.embed_dim), np.float32)


def load(path: str, *, step: Optional[int] = None,
         device: Optional[jax.Device] = None) -> LoadedModel:
  """Restores a run (latest checkpoint, or `step`) onto one device (default: the first local one).

  path: a workdir, its checkpoints/ folder, or checkpoints/<step>; or a model converted from
  OpenCLIP/OpenAI weights by `python -m rankclip_jax.convert` (the same layout). Only the
  parameters are read, not the optimizer state.
  """
  config, setup, params, step = model_setup.restore_run(path, step=step, device=device)
  return LoadedModel(model=setup.model, params=params, config=config, tokenizer=setup.tokenizer,
                     step=step)

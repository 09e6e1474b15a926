"""Pure loss functions: arrays and floats in, scalars (and a metrics dict) out.

Every loss takes `axis_name` (inside shard_map: gather the other side, compute local rows, psum) and
`chunk_size` (rematerialised row blocks); see rowwise.py. `LOSSES` is the one registry of the names
config.loss.name takes, each with one calling convention and what it needs of the rest of the run.
"""

import dataclasses
from typing import Callable

from rankclip_jax.losses.baselines import cyclip_loss
from rankclip_jax.losses.baselines import siglip_loss
from rankclip_jax.losses.contrastive import clip_logits
from rankclip_jax.losses.contrastive import clip_loss
from rankclip_jax.losses.rankclip import rankclip_loss
from rankclip_jax.losses.rankclip import ranking_weight_multiplier
from rankclip_jax.losses.rankclip import SCHEDULES
from rankclip_jax.losses.ranking import plackett_luce_nll
from rankclip_jax.losses.ranking import plackett_luce_nll_rows
from rankclip_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Loss:
  """A config.loss.name: fn(image_emb, text_emb, scale, bias, cross_weight, inmodal_weight, *,
  axis_name, chunk_size) -> (loss, metrics), and what it asks of the run."""

  fn: Callable
  has_bias: bool = False  # a learnable logit bias in the model (SigLIP)
  weighted: bool = True  # cross_weight / inmodal_weight weigh extra terms (else they must be 0)
  pairs: bool = False  # trains on image pairs (PC-CLIP), and only pairs train with it


LOSSES: Registry[Loss] = Registry("config.loss.name")
LOSSES.add("rankclip", Loss(
    lambda i, t, s, b, cw, iw, **kw: rankclip_loss(i, t, s, cross_weight=cw, inmodal_weight=iw,
                                                   **kw)))
LOSSES.add("cyclip", Loss(
    lambda i, t, s, b, cw, iw, **kw: cyclip_loss(i, t, s, cross_weight=cw, inmodal_weight=iw,
                                                 **kw)))
LOSSES.add("siglip", Loss(lambda i, t, s, b, cw, iw, **kw: siglip_loss(i, t, s, b, **kw),
                          has_bias=True, weighted=False))
# PC-CLIP: the symmetric InfoNCE between captions and image differences.
LOSSES.add("pcclip", Loss(
    lambda i, t, s, b, cw, iw, **kw: rankclip_loss(i, t, s, cross_weight=0.0, inmodal_weight=0.0,
                                                   **kw),
    weighted=False, pairs=True))

__all__ = [
    "LOSSES",
    "Loss",
    "SCHEDULES",
    "clip_logits",
    "clip_loss",
    "cyclip_loss",
    "plackett_luce_nll",
    "plackett_luce_nll_rows",
    "rankclip_loss",
    "ranking_weight_multiplier",
    "siglip_loss",
]

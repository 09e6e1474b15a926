"""Pure loss functions: arrays and floats in, scalars (and a metrics dict) out.

Every loss takes `axis_name` (inside shard_map: gather the other side, compute local rows, psum) and
`chunk_size` (rematerialised row blocks); see rowwise.py. `LOSSES` is the one registry of the names
config.loss.name takes, each with one calling convention and what it needs of the rest of the run.
"""

import dataclasses
from typing import Callable

from rankclip_jax.losses.alip import alip_gates
from rankclip_jax.losses.alip import alip_initial_state
from rankclip_jax.losses.alip import alip_loss
from rankclip_jax.losses.contrastive import clip_logits
from rankclip_jax.losses.contrastive import clip_loss
from rankclip_jax.losses.contrastive import clip_loss_and_metrics
from rankclip_jax.losses.cyclip import cyclip_loss
from rankclip_jax.losses.rankclip import SCHEDULES
from rankclip_jax.losses.rankclip import rankclip_loss
from rankclip_jax.losses.rankclip import ranking_weight_multiplier
from rankclip_jax.losses.ranking import plackett_luce_nll
from rankclip_jax.losses.ranking import plackett_luce_nll_rows
from rankclip_jax.losses.siglip import siglip_loss
from rankclip_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Field:
  """A number of config.loss that belongs to one loss: its default, the values it may take, and
  what it is (for the config's comments and the error a bad value gets)."""

  default: float
  allowed: Callable[[float], bool]
  allowed_text: str  # e.g. "in [0, 1)"
  doc: str


@dataclasses.dataclass(frozen=True)
class Loss:
  """A config.loss.name, with one calling convention for every loss:

    fn(embeddings, scale, bias, state, hp, *, axis_name, chunk_size) -> (loss, metrics, new state)

  embeddings: {"image": [N, D], "text": [N, D], and each other field of `texts`}, L2-normalised;
  state: the loss's own running quantities (a dict of scalars: ALIP's running means; {} for the
  others), passed in and returned; hp: config.loss's numbers, each loss reading its own:
  "cross_weight" and "inmodal_weight" (after their schedule), and the loss's own `fields`.
  """

  fn: Callable
  has_bias: bool = False  # a learnable logit bias in the model (SigLIP)
  weighted: bool = True  # cross_weight / inmodal_weight weigh extra terms (else they must be 0)
  pairs: bool = False  # trains on image pairs (PC-CLIP), and only pairs train with it
  # The caption fields of a training batch it embeds: the raw text, and ALIP's synthetic caption.
  texts: tuple[str, ...] = ("text",)
  # () -> the state at step 0 (a dict of float32 scalars).
  init_state: Callable[[], dict] = dict
  # The loss's own numbers, config.loss.<name> (defaults.py gives every loss's its default; config
  # validation checks the chosen loss's; make_objective passes them in `hp`).
  fields: dict[str, Field] = dataclasses.field(default_factory=dict)


def loss_fields() -> dict[str, Field]:
  """Every registered loss's own config.loss fields, by name (the names are unique: checked)."""
  out: dict[str, Field] = {}
  for name, loss in LOSSES.items():
    for field, spec in loss.fields.items():
      if field in out or field in ("name", "cross_weight", "inmodal_weight", "weight_schedule",
                                   "strategy", "chunk_size"):
        raise ValueError(f"config.loss.{field} of loss {name!r} is already a config.loss field.")
      out[field] = spec
  return out


def _stateless(loss_fn: Callable) -> Callable:
  """loss_fn(image, text, scale, bias, hp, **kw) -> (loss, metrics) as a Loss.fn without state."""
  def fn(emb, scale, bias, state, hp, **kw):
    loss, metrics = loss_fn(emb["image"], emb["text"], scale, bias, hp, **kw)
    return loss, metrics, state
  return fn


def _alip(emb, scale, bias, state, hp, **kw):
  del bias
  return alip_loss(emb["image"], emb["text"], emb["synthetic_text"], scale, state,
                   momentum=hp["alip_momentum"], temperature=hp["alip_temperature"], **kw)


LOSSES: Registry[Loss] = Registry("config.loss.name")
LOSSES.add("rankclip", Loss(_stateless(
    lambda i, t, s, b, hp, **kw: rankclip_loss(i, t, s, cross_weight=hp["cross_weight"],
                                               inmodal_weight=hp["inmodal_weight"], **kw))))
# CLIP alone: the contrastive loss and nothing else computed. "rankclip" with both weights 0 has
# the same loss and gradient and also computes (and logs) the ranking terms it does not train on:
# the study's CLIP, for its diagnostics; this one is CLIP's cost, for timing and large batches.
LOSSES.add("clip", Loss(
    _stateless(lambda i, t, s, b, hp, **kw: clip_loss_and_metrics(i, t, s, **kw)), weighted=False))
LOSSES.add("cyclip", Loss(_stateless(
    lambda i, t, s, b, hp, **kw: cyclip_loss(i, t, s, cross_weight=hp["cross_weight"],
                                             inmodal_weight=hp["inmodal_weight"], **kw))))
LOSSES.add("siglip", Loss(_stateless(lambda i, t, s, b, hp, **kw: siglip_loss(i, t, s, b, **kw)),
                          has_bias=True, weighted=False))
# PC-CLIP: the symmetric InfoNCE between captions and image differences.
LOSSES.add("pcclip", Loss(_stateless(
    lambda i, t, s, b, hp, **kw: rankclip_loss(i, t, s, cross_weight=0.0, inmodal_weight=0.0,
                                               **kw)),
    weighted=False, pairs=True))
# ALIP: CLIP on the raw text and on a synthetic caption, weighted by consistency gates.
LOSSES.add("alip", Loss(
    _alip, weighted=False, texts=("text", "synthetic_text"), init_state=alip_initial_state,
    fields={  # the authors' constants (losses/alip.py)
        "alip_momentum": Field(
            0.99, lambda v: 0 <= v < 1, "in [0, 1)",
            "the running mean cosines move by m <- momentum * m + (1 - momentum) * batch mean"),
        "alip_temperature": Field(
            2.0, lambda v: v > 0, "> 0", "the gates are exp(temperature * (cos - m))"),
    }))

__all__ = [
    "Field",
    "LOSSES",
    "Loss",
    "SCHEDULES",
    "alip_gates",
    "alip_initial_state",
    "alip_loss",
    "clip_logits",
    "clip_loss",
    "clip_loss_and_metrics",
    "cyclip_loss",
    "loss_fields",
    "plackett_luce_nll",
    "plackett_luce_nll_rows",
    "rankclip_loss",
    "ranking_weight_multiplier",
    "siglip_loss",
]

"""Pure loss functions: arrays and floats in, scalars (and a metrics dict) out.

Every loss takes `axis_name` (inside shard_map: gather the other side, compute local rows, psum) and
`chunk_size` (rematerialised row blocks); see rowwise.py.
"""

from rankclip_jax.losses.baselines import cyclip_loss
from rankclip_jax.losses.baselines import siglip_loss
from rankclip_jax.losses.contrastive import clip_logits
from rankclip_jax.losses.contrastive import clip_loss
from rankclip_jax.losses.rankclip import rankclip_loss
from rankclip_jax.losses.rankclip import ranking_weight_multiplier
from rankclip_jax.losses.rankclip import SCHEDULES
from rankclip_jax.losses.ranking import plackett_luce_nll
from rankclip_jax.losses.ranking import plackett_luce_nll_rows

__all__ = [
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

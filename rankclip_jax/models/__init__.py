"""Flax modules only: the image tower, the text tower and the two-tower model."""

from rankclip_jax.models.text import TextTransformer
from rankclip_jax.models.two_towers import (SIZES, TowerSizes, TwoTowers, build_model,
                                            l2_normalize, tower_sizes)
from rankclip_jax.models.vit import VisionTransformer

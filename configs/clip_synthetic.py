"""The CLIP baseline of configs/rankclip_synthetic.py: the same run with both ranking weights 0."""

from configs import rankclip_synthetic


def get_config():
  c = rankclip_synthetic.get_config()
  c.loss.cross_weight = 0.0
  c.loss.inmodal_weight = 0.0
  return c

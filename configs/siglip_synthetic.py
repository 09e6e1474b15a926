"""The SigLIP baseline of configs/rankclip_synthetic.py: the pairwise sigmoid loss with a learnable
logit scale and bias initialised at 10 and -10 (Zhai et al. 2023), everything else identical."""

from configs import rankclip_synthetic


def get_config():
  c = rankclip_synthetic.get_config()
  c.loss.name = "siglip"
  c.loss.cross_weight = 0.0
  c.loss.inmodal_weight = 0.0
  c.model.init_scale = 10.0
  c.model.init_bias = -10.0
  return c

"""The ALIP baseline of configs/rankclip_synthetic.py (Yang et al. 2023): CLIP on each image's text
and on a synthetic caption of it, both weighted by ALIP's consistency gates (the authors' momentum
0.99 and gate temperature 2), everything else identical.

The synthetic captions come from the embedded scenes' stand-in captioner, which describes the whole
scene with a share `captioner_error` (20%) of its attributes wrong (data/synthetic/captioner.py).
ALIP sees two captions per image where the other baselines see one.
"""

from configs import rankclip_synthetic


def get_config():
  c = rankclip_synthetic.get_config()
  c.loss.name = "alip"
  c.loss.cross_weight = 0.0
  c.loss.inmodal_weight = 0.0
  c.loss.alip_momentum = 0.99
  c.loss.alip_temperature = 2.0
  c.data.train.captioner_error = 0.2
  return c

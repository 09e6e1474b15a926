"""The CyCLIP baseline of configs/rankclip_synthetic.py: CLIP plus CyCLIP's cyclic terms
(Goel et al. 2022; lambda_1 = lambda_2 = 0.25, constant), everything else identical."""

from configs import rankclip_synthetic


def get_config():
  c = rankclip_synthetic.get_config()
  c.loss.name = "cyclip"
  c.loss.cross_weight = 0.25    # lambda_2: N * mean((L - L^T)^2) / s^2
  c.loss.inmodal_weight = 0.25  # lambda_1: N * mean((S_I - S_T)^2) / s^2
  c.loss.weight_schedule = "constant"
  return c

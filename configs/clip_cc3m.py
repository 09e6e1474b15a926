"""The CLIP baseline of configs/rankclip_cc3m.py: the same recipe, data and evaluation with both
ranking weights 0, so that the comparison runs on identical code (docs/method.md's CLIP row)."""

from configs import rankclip_cc3m


def get_config(evals: str | None = None):
  c = rankclip_cc3m.get_config(evals)
  c.loss.cross_weight = 0.0
  c.loss.inmodal_weight = 0.0
  return c

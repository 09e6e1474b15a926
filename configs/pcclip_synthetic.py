"""PC-CLIP fine-tuning (Sam et al. 2024, docs/method.md) of a trained run on synthetic scene pairs.

  python main.py --config=configs/pcclip_synthetic.py:runs/demo --workdir=runs/demo_pcclip

The config argument is the run to start from (config.model.init_from; default runs/demo, the
README's demo). Each training example is a pair of scenes with a caption that compares them ("the
first image shows a larger shape than the second.", more/fewer shapes, further left/right,
higher/lower, colour); the loss is a symmetric InfoNCE between the captions and normalize(v_a - v_b)
over the batch of pairs. The image tower is frozen (config.optim.freeze_regex) and the text tower
trained. The architecture fields are the demo's (configs/rankclip_synthetic.py): to start from
another run, override them to match it (the error at start-up lists the flags).

Evaluations: pairwise comparison accuracy on held-out pairs (sign of cos(t, v_a - v_b), and the
caption against its reversal), ranking scenes along each attribute (Spearman), and shape zero-shot
with and without comparative prompting. `python -m rankclip_jax.evaluate --workdir=runs/demo
--evals=configs/pcclip_synthetic.py` gives the same numbers for the run before fine-tuning.
"""

import ml_collections

from configs import common
from configs import rankclip_synthetic


def pcclip_evals(num_examples: int = 500) -> ml_collections.ConfigDict:
  zero_shot = dict(kind="zero_shot", task="shape", split="test", min_objects=1, max_objects=1,
                   num_examples=num_examples, seed=0)
  return ml_collections.ConfigDict(dict(
      pairwise=dict(kind="pairwise", split="test", num_examples=num_examples, seed=0),
      ranking=dict(kind="attribute_ranking", split="test", num_examples=num_examples // 4,
                   seed=0),
      zs_shape=zero_shot,
      zs_shape_comparative=dict(zero_shot, comparative_alpha=0.85,
                                comparative_template="a {} differs from a {} in shape."),
  ))


def get_config(init_from: str = "runs/demo"):
  c = rankclip_synthetic.get_config()
  c.model.init_from = init_from
  c.loss.name = "pcclip"
  c.loss.cross_weight = 0.0
  c.loss.inmodal_weight = 0.0
  c.optim.freeze_regex = "image/.*"
  c.optim.learning_rate = 2e-4
  c.optim.warmup_steps = 20
  c.total_steps = 300
  c.eval_every_steps = 100
  c.checkpoint.every_steps = 100
  c.data.train = common.data_source("synthetic_pairs", split="train", num_records=1_000_000)
  c.data.crop_scale = (1.0, 1.0)  # pairs are never randomly cropped (PreparePair)
  c.evals = pcclip_evals()
  return c

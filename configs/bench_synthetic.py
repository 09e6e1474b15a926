"""The embedded benchmark for the method studies (configs/sweeps/*.py): the demo's data and recipe
(configs/rankclip_synthetic.py) on smaller towers and images, ~4x cheaper a run, so that a study of
dozens of seeded runs fits in hours on a 2-core CPU.

  python -m rankclip_jax.sweep --config=configs/bench_synthetic.py \
      --sweep=configs/sweeps/paper_comparison.py --workdir=runs/bench_comparison

What it changes from the demo, and why (measured in docs/performance.md, "The studies' benchmark
config"):
- 40 px images (a 5 x 5 patch grid after the conv stem, objects 10-23 px across) instead of 48;
- towers of width 96 (image depth 3, text depth 2, 4 heads, embedding 96) instead of 128 and 4;
- context 16 tokens: 97.9% of the training captions fit whole (the held-out retrieval captions of
  three-object scenes lose their last words alike for every method);
- 800 steps, evaluated once, at the end, on the demo's held-out sets (512 scenes each: the
  binomial standard error of an accuracy is at most 0.022, reported beside the seeds' spread).
Together: a step ~0.35x the demo's, a run of ~2-4 minutes on 2 cores (the VMs of one kind differ
2-3x). What it learns at the end (seed 0, RankCLIP): colour 0.90 and count 0.82 top-1 (chance
0.125 and 0.333), held-out combinations 0.21 (chance 0.016), retrieval R@1 ~0.10 (chance 0.002),
shape 0.35 (chance 0.125), which is still rising (0.27 at step 400): shape is learnt last, so a
difference in shape needs more seeds than one in colour or retrieval to stand out of the noise.
"""

from configs import rankclip_synthetic


def get_config():
  c = rankclip_synthetic.get_config()
  c.image_size = 40
  c.context_length = 16
  c.model.size = "custom"
  c.model.custom.update(dict(patch_size=8, image_width=96, image_depth=3, image_heads=4,
                             text_width=96, text_depth=2, text_heads=4, embed_dim=96))
  c.total_steps = 800
  c.eval_every_steps = 800  # once, at the end
  c.log_every_steps = 50
  return c

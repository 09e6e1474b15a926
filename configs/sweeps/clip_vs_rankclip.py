"""CLIP and RankCLIP side by side on one seed: docs/sweeps.md's first comparison.

  python -m rankclip_jax.sweep --config=configs/rankclip_synthetic.py \
      --sweep=configs/sweeps/clip_vs_rankclip.py --workdir=runs/clip_vs_rankclip --parallel=2

Two runs, `clip,seed=0` and `rankclip,seed=0`, the same as paper_comparison.py's (identical code
and data; only the loss differs), trained at the same time; the sweep ends by printing their results
tables next to each other. `clip_vs_rankclip.py:S` trains seed S instead. One seed shows what the
two runs did, not which method is better: seed noise on the demo is as large as the differences
(docs/results.md); paper_comparison.py repeats the pair over five seeds with intervals.
"""

from configs.sweeps import paper_comparison
from rankclip_jax.sweeps import Sweep, product, values, variants


def get_sweep(seed: str = "0"):
  methods = {k: paper_comparison.METHODS[k] for k in ("clip", "rankclip")}
  return Sweep(runs=product(variants(methods), values("seed", [int(seed)])), baseline="clip",
               headline=paper_comparison.HEADLINE)

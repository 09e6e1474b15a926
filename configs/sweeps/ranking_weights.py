"""RankCLIP's ranking weights: both terms at the same weight w in {1/64, ..., 1/2} on the authors'
ramp schedule, and the constant schedule at their default 1/16, three seeds each, each compared
with the default (w = 1/16, ramp):

  python -m rankclip_jax.sweep --config=configs/bench_synthetic.py \
      --sweep=configs/sweeps/ranking_weights.py --workdir=runs/ranking_weights

Runs: <workdir>/w=<w>,seed=<seed> and w=0.0625,weight_schedule=constant,seed=<seed>. To move the
two weights independently instead, replace WEIGHTS below with
product(values("loss.cross_weight", W), values("loss.inmodal_weight", W)) (36 settings).
"""

from rankclip_jax.sweeps import Sweep, chain, fixed, product, values

W = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
SEEDS = range(3)
BOTH = ("loss.cross_weight", "loss.inmodal_weight")
RANKCLIP = {"loss.name": "rankclip", "model.init_scale": 1 / 0.07}

WEIGHTS = product(values(BOTH, W, name="w"),
                  fixed(dict(RANKCLIP, **{"loss.weight_schedule": "ramp"})))
CONSTANT = product(values(BOTH, [1 / 16], name="w"), fixed(RANKCLIP),
                   values("loss.weight_schedule", ["constant"]))

HEADLINE = ("zs_shape/top1", "zs_colour/top1", "zs_count/top1", "zs_heldout_combo/top1",
            "retrieval/i2t_r1", "retrieval/t2i_r1", "diagnostics/cross_spearman")


def get_sweep():
  return Sweep(runs=product(chain(WEIGHTS, CONSTANT), values("seed", SEEDS)),
               baseline="w=0.0625", headline=HEADLINE)

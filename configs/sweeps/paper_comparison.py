"""The methods of docs/method.md on identical code, five seeds each, compared with CLIP:

  python -m rankclip_jax.sweep --config=configs/bench_synthetic.py \
      --sweep=configs/sweeps/paper_comparison.py --workdir=runs/bench_comparison

`--sweep=configs/sweeps/paper_comparison.py:N` runs seeds 0..N-1 only (default 5); the run names do
not depend on N, so a later run with more seeds in the same workdir skips the finished ones.

Only the loss differs between the methods (and SigLIP's logit scale and bias, which its loss needs):
every method sets all of its loss fields here, so the base config decides nothing about the loss.
Each run's folder is <workdir>/<method>,seed=<seed>; the report groups the seeds of each method and
gives every method's difference from CLIP paired by seed (docs/results.md).
"""

from rankclip_jax.sweeps import Sweep, product, values, variants

SEEDS = range(5)
SOFTMAX = {"model.init_scale": 1 / 0.07, "model.init_bias": -10.0}  # CLIP's 1/0.07 (bias unused)


def _rankclip(cross: float, inmodal: float) -> dict:
  """The authors' ranking terms on their ramp schedule r(t) (weight x clip(3 t / T, 0, 2))."""
  return dict(SOFTMAX, **{"loss.name": "rankclip", "loss.cross_weight": cross,
                          "loss.inmodal_weight": inmodal, "loss.weight_schedule": "ramp"})


METHODS = {
    "clip": _rankclip(0.0, 0.0),
    "rankclip": _rankclip(1 / 16, 1 / 16),
    "rankclip_c": _rankclip(1 / 16, 0.0),  # RankCLIP^C: the cross-modal ranking term only
    "rankclip_i": _rankclip(0.0, 1 / 16),  # RankCLIP^I: the in-modal ranking term only
    # CyCLIP (Goel et al. 2022): lambda_2 (cross-modal) = lambda_1 (in-modal) = 0.25, constant.
    "cyclip": dict(SOFTMAX, **{"loss.name": "cyclip", "loss.cross_weight": 0.25,
                               "loss.inmodal_weight": 0.25, "loss.weight_schedule": "constant"}),
    # SigLIP (Zhai et al. 2023): no ranking or cyclic terms; learnable scale and bias from 10, -10.
    "siglip": {"loss.name": "siglip", "loss.cross_weight": 0.0, "loss.inmodal_weight": 0.0,
               "loss.weight_schedule": "constant", "model.init_scale": 10.0,
               "model.init_bias": -10.0},
    # ALIP (Yang et al. 2023): CLIP on the caption and on a synthetic caption of the image, both
    # weighted by its consistency gates; the embedded scenes' stand-in captioner (20% of its
    # attributes wrong) writes the synthetic captions. It sees two captions per image.
    "alip": dict(SOFTMAX, **{"loss.name": "alip", "loss.cross_weight": 0.0,
                             "loss.inmodal_weight": 0.0, "loss.weight_schedule": "constant",
                             "loss.alip_momentum": 0.99, "loss.alip_temperature": 2.0,
                             "data.train.captioner_error": 0.2}),
}

HEADLINE = ("zs_shape/top1", "zs_colour/top1", "zs_count/top1", "zs_heldout_combo/top1",
            "retrieval/i2t_r1", "retrieval/t2i_r1", "diagnostics/cross_spearman")


FIRST = ("clip", "rankclip")  # the headline pair


def _order(run) -> tuple:
  """CLIP and RankCLIP at every seed first, then the other methods seed by seed: a study stopped
  part-way (it resumes across sittings) has the headline pair complete and whole seeds of the rest."""
  method, seed = run[0].label, run[1].value
  return (method not in FIRST, seed, list(METHODS).index(method))


def get_sweep(seeds: str = str(len(SEEDS))):
  runs = product(variants(METHODS), values("seed", range(int(seeds))))
  return Sweep(runs=sorted(runs, key=_order), baseline="clip", headline=HEADLINE)

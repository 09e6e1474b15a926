"""Train and evaluate a RankCLIP (or CLIP) model (the same as the `rankclip-train` command).

  python main.py --config=configs/rankclip_synthetic.py --workdir=runs/demo \
      --config.total_steps=2000 --config.loss.cross_weight=0.1

Running the same command again resumes from the last checkpoint in --workdir.
"""

from rankclip_jax.main import main, run  # pylint: disable=unused-import

if __name__ == "__main__":
  run()

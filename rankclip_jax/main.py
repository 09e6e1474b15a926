"""Train and evaluate a RankCLIP (or CLIP) model: the `rankclip-train` command (and `main.py` at the
top of the repository, the same).

  python main.py --config=configs/rankclip_synthetic.py --workdir=runs/demo \
      --config.total_steps=2000 --config.loss.cross_weight=0.1

Running the same command again resumes from the last checkpoint in --workdir.
"""

from ml_collections import config_flags

from rankclip_jax import cli, host_memory, train
from rankclip_jax.errors import USER_ERRORS

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py); override fields with "
    "--config.<field>=<value>.", lock_config=True)
_WORKDIR = cli.workdir_flag("Directory for checkpoints, metrics and results.")


def main(argv):
  cli.start(argv)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR())
  except USER_ERRORS as e:
    raise SystemExit(f"Error: {e}") from None


def run():
  """The `rankclip-train` command (a command-line mistake: one `Error:` line, exit status 2). On a
  CPU it first starts itself again with huge pages for XLA's working memory (host_memory.py)."""
  host_memory.restart_with_huge_pages()
  cli.run(main, required=["config", "workdir"])


if __name__ == "__main__":
  run()

"""The common start of the command-line entry points (main.py, python -m rankclip_jax.evaluate)."""

from absl import app, flags, logging

from rankclip_jax import distributed


def step_flag():
  """--step, for the entry points that read one checkpoint of a run (evaluate, convert). Defined
  once: absl flags are global to the process, and tests import both modules."""
  if "step" not in flags.FLAGS:
    flags.DEFINE_integer("step", None, "The checkpoint step to use (default: the latest).")
  return lambda: flags.FLAGS["step"].value


def start(argv) -> None:
  """Rejects stray arguments, keeps library INFO chatter (Orbax, CLU) out of the progress lines
  unless --verbosity is given, and joins the other processes of a multi-process run."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()

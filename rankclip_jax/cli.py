"""The common start of the command-line entry points (main.py, python -m rankclip_jax.evaluate)."""

from absl import app, flags, logging

from rankclip_jax import distributed


def start(argv) -> None:
  """Rejects stray arguments, keeps library INFO chatter (Orbax, CLU) out of the progress lines
  unless --verbosity is given, and joins the other processes of a multi-process run."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()

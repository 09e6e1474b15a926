"""The common start of the command-line entry points (main.py, python -m rankclip_jax.evaluate)."""

from absl import app, flags, logging

from rankclip_jax import distributed


def _shared_flag(define, name: str, help_text: str):
  """Defines --name unless an entry point imported earlier in this process did (absl flags are
  global to the process: a notebook or a test may import main, evaluate and convert together);
  returns a getter of its value."""
  if name not in flags.FLAGS:
    define(name, None, help_text)
  return lambda: flags.FLAGS[name].value


def step_flag():
  """--step, for the entry points that read one checkpoint of a run (evaluate, convert)."""
  return _shared_flag(flags.DEFINE_integer, "step",
                      "The checkpoint step to use (default: the latest).")


def workdir_flag(help_text: str):
  """--workdir: the run's directory (main.py writes it; evaluate reads it)."""
  return _shared_flag(flags.DEFINE_string, "workdir", help_text)


def start(argv) -> None:
  """Rejects stray arguments, keeps library INFO chatter (Orbax, CLU) out of the progress lines
  unless --verbosity is given, and joins the other processes of a multi-process run."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()

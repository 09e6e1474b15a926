"""The common start of the command-line entry points (main.py / rankclip-train, rankclip-evaluate,
rankclip-convert): the flags they share, and `run`, which checks the command line before anything
runs.

Every mistake on the command line (a misspelt or mistyped config override, a config file that is
missing or fails to load, an unknown flag, a missing required flag, a stray argument) is reported
as ONE line on stderr, `Error: <the flag or field, what was given, the fix>`, with exit status 2
(the Unix convention for a usage error; absl's own usage errors exit 1), before `main` runs: no
traceback, no workdir, no file. Errors of the run itself (rankclip_jax.errors) are the entry
points' business: `Error: ...` with exit status 1.
"""

from __future__ import annotations

import difflib
import glob
import os
import re
import sys
import traceback
from typing import Any, Callable, NoReturn, Optional, Sequence

from absl import app, flags, logging
from ml_collections import config_dict
from ml_collections.config_flags import config_flags

from rankclip_jax import distributed

USAGE_ERROR_STATUS = 2


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


def usage_error(message: str) -> NoReturn:
  """Reports a command-line mistake: `Error: <message>` as one line on stderr, exit status 2."""
  sys.stdout.flush()
  sys.stderr.write(f"Error: {_one_line(message)}\n")
  sys.stderr.flush()
  sys.exit(USAGE_ERROR_STATUS)


def run(main: Callable[[list[str]], Any], required: Sequence[str] = ()) -> None:
  """absl.app.run(main) with the command line checked first (see the module docstring); the
  flags in `required` must be given, and not empty."""
  flags.mark_flags_as_required(list(required))
  put_config_packages_on_path(sys.argv)
  app.run(main, flags_parser=lambda argv: parse_command_line(argv, required))


def put_config_packages_on_path(argv: Sequence[str]) -> list[str]:
  """Makes the package that a config or sweep file belongs to importable, as `python main.py` run
  from the repository does (the script's folder comes first on sys.path there): a console script
  (rankclip-train, rankclip-sweep, ...) starts with its own folder first instead, where
  configs/rankclip_synthetic.py's `from configs import common` would fail. For every flag whose
  value names a .py file (`--config=configs/x.py`, `--config configs/x.py`, `--sweep=s.py:3`), the
  folder above the file's package (the nearest ancestor without an __init__.py) goes first on
  sys.path, unless it is there already. Returns the folders added."""
  values = []
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith("--"):
      _, eq, value = arg.partition("=")
      values.append(value if eq else (argv[i + 1] if i + 1 < len(argv) else ""))
  present = {os.path.abspath(p or os.curdir) for p in sys.path}
  added = []
  for value in values:
    path = re.sub(r"(?<=\.py):.*$", "", value)  # config_flags' "file.py:argument"
    if not (path.endswith(".py") and os.path.isfile(path)):
      continue
    root = os.path.dirname(os.path.abspath(path))
    while os.path.isfile(os.path.join(root, "__init__.py")):
      root = os.path.dirname(root)
    if root not in present:
      sys.path.insert(0, root)
      present.add(root)
      added.append(root)
  return added


def parse_command_line(argv: Sequence[str], required: Sequence[str] = (),
                       flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Parses argv into `flag_values` and returns [program]; any mistake is `usage_error`."""
  rest, problem = check_command_line(argv, required, flag_values)
  if problem is not None:
    usage_error(problem)
  return rest


def check_command_line(argv: Sequence[str], required: Sequence[str] = (),
                       flag_values: flags.FlagValues = flags.FLAGS
                       ) -> tuple[list[str], Optional[str]]:
  """Parses argv into `flag_values`: ([program], None), or (the rest, the one-line message without
  `Error: `) for the first mistake. The sweep command checks every run's command line with it."""
  fv = flag_values
  try:
    rest = fv(list(argv))
  except Exception as e:  # pylint: disable=broad-except
    # absl's flags.Error, and whatever ml_collections' config flags raise while loading a file or
    # resolving an override (KeyError/AttributeError for a missing field, a config file's own
    # exception, ...): all of them say the command line cannot work.
    return list(argv[:1]), _describe(e, argv, fv)
  for name in fv:
    flag = fv[name]
    if _is_config_file_flag(flag) and flag.present:
      failure = _load_failure(flag.value)
      if failure is not None:
        return rest, _load_failure_message(flag, flag.config_filename, failure)
  for name in required:
    if fv[name].value == "":
      return rest, (f"--{name}= is empty: --{name} is required. Give it a value; "
                    "--helpshort lists the flags.")
  if len(rest) > 1:
    return rest, _stray_arguments_message(rest[1:])
  return rest, None


def start(argv) -> None:
  """Rejects stray arguments, keeps library INFO chatter (Orbax, CLU) out of the progress lines
  unless --verbosity is given, and joins the other processes of a multi-process run."""
  if len(argv) > 1:
    usage_error(_stray_arguments_message(argv[1:]))
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()


# What the messages are made of.


def _stray_arguments_message(args: Sequence[str]) -> str:
  return (f"unexpected argument{'s' if len(args) > 1 else ''} {' '.join(map(repr, args))}: this "
          f"command takes only flags, each written --name=value (if {args[0]!r} is the value of "
          "the flag before it, join them with '='); --helpshort lists the flags.")


def _one_line(text: str) -> str:
  """`text` on one line; of a traceback in it, only its last line (the exception)."""
  head, marker, tail = text.partition("Traceback (most recent call last):")
  if marker:
    last = [line for line in tail.splitlines() if line.strip()][-1:]
    text = " ".join([head.strip().rstrip(":")] + last)
  return " ".join(text.split())


def _exception_text(e: BaseException) -> str:
  text = e.msg if isinstance(e, SyntaxError) and e.msg else str(e)
  return f"{type(e).__name__}: {_one_line(text)}"


def _chain(e: BaseException) -> list[BaseException]:
  """e, then the exception it was raised from or during, and so on."""
  out = [e]
  while (out[-1].__cause__ or out[-1].__context__) is not None and len(out) < 20:
    out.append(out[-1].__cause__ or out[-1].__context__)
  return out


def _frames(e: BaseException):
  return [frame for frame, _ in traceback.walk_tb(e.__traceback__)]


def _flag_being_parsed(e: BaseException) -> tuple[Optional[flags.Flag], Any]:
  """The flag (and the argument) whose parsing raised `e`: the outermost Flag.parse/_parse frame
  (a config flag resolves its overrides, loads its file, inside its own parse)."""
  for x in _chain(e):
    for frame in _frames(x):
      owner = frame.f_locals.get("self")
      if frame.f_code.co_name in ("parse", "_parse") and isinstance(owner, flags.Flag):
        return owner, frame.f_locals.get("argument", frame.f_locals.get("arguments"))
  return None, None


def _is_config_file_flag(flag) -> bool:
  return (config_flags.is_config_flag(flag)
          and isinstance(flag.parser, config_flags.ConfigFileFlagParser))


def _override_of(name: str, fv: flags.FlagValues) -> Optional[tuple[flags.Flag, str]]:
  """(the config flag, the field path) if --name is an override --<config>.<path>."""
  prefix, dot, path = name.partition(".")
  if dot and prefix in fv and config_flags.is_config_flag(fv[prefix]):
    return fv[prefix], path
  return None


def _describe(e: Exception, argv: Sequence[str], fv: flags.FlagValues) -> str:
  """The one-line message (without `Error: `) for an exception of fv(argv)."""
  if isinstance(e, flags.UnrecognizedFlagError):
    return _unknown_flag_message(e, fv)
  flag, argument = _flag_being_parsed(e)
  if flag is not None and _is_config_file_flag(flag):
    return _config_file_message(flag, str(argument), e, argv)
  if flag is not None and _override_of(flag.name, fv) is not None:
    return _override_message(flag, argument, e, *_override_of(flag.name, fv))
  if isinstance(e, flags.IllegalFlagValueError):
    lines = str(e).splitlines()
    missing = [m.group(1) for m in (re.fullmatch(
        r"flag --(\S+)=None: Flag --\1 must have a value other than None\.", line.strip())
                                     for line in lines) if m]
    if missing and len(missing) == len(lines):  # flags.mark_flags_as_required's validators
      return (" ".join(f"--{name} is required." for name in missing) + " ("
              + " ".join(f"Flag --{name} must have a value other than None." for name in missing)
              + ") --helpshort lists the flags.")
    return "; ".join(_one_line(re.sub(r"^flag (?=--)", "", line)) for line in lines if line)
  if isinstance(e, flags.Error):
    return _one_line(re.sub(r"^flag (?=--)", "", str(e)))
  if flag is not None:
    return f"--{flag.name}={argument}: {_exception_text(e)}"
  return _exception_text(e)


def _unknown_flag_message(e: flags.UnrecognizedFlagError, fv: flags.FlagValues) -> str:
  given = e.flagvalue or f"--{e.flagname}"
  prefix = e.flagname.partition(".")[0]
  if _override_of(e.flagname, fv) is not None:
    return (f"{given}: an override of --{prefix} without --{prefix}=<config file>; give the config "
            "file first, then its overrides.")
  suggestions = re.search(r"Did you mean: (.*) \?$", str(e))
  if suggestions:
    names = [f"--{s.strip()}" for s in suggestions.group(1).split(",")]
    return f"unknown flag {given}. Did you mean {' or '.join(names)}?"
  return f"unknown flag {given}; --helpshort lists the flags."


def _override_message(flag, argument, e: Exception, config_flag, path: str) -> str:
  """An override --<config>.<path>=<value> whose value cannot be parsed or set."""
  given = f"--{flag.name}={argument}"
  if isinstance(e, flags.Error):
    reason = str(e)
    reason = _one_line(reason[len(f"flag {given}: "):] if reason.startswith(f"flag {given}: ")
                       else reason)
  else:
    reason = _exception_text(e)
  try:
    current = _get_path(config_flag.value, path)
  except Exception:  # pylint: disable=broad-except
    return f"{given}: {reason}"
  if isinstance(current, config_dict.ConfigDict):
    hint = (f"{flag.name} is a group of fields ({', '.join(sorted(current.keys()))}): override "
            f"them one by one, --{flag.name}.<field>=<value>")
  elif current is None:
    hint = f"{flag.name} is None in {config_flag.config_filename}"
  else:
    kind = type(current).__name__
    hint = (f"{flag.name} takes {'an' if kind[0] in 'aeiou' else 'a'} {kind} "
            f"({config_flag.config_filename} sets {current!r})")
  return f"{given}: {reason.rstrip('.')}; {hint}."


def _get_path(config, path: str):
  for part in filter(None, path.split(".")):
    config = config[part]
  return config


def _config_file_message(flag, argument: str, e: Exception, argv: Sequence[str]) -> str:
  """An error while --<config>=<file> was parsed: the file did not load, or get_config raised, or
  one of the overrides names no field of the config."""
  chain = _chain(e)
  for x in chain:
    if isinstance(x, OSError) and "earlier failure to load" in str(x) and x.__cause__:
      return _load_failure_message(flag, argument, x.__cause__)  # an override of a failed file
  loading = any(isinstance(frame.f_locals.get("self"), config_flags.ConfigFileFlagParser)
                for x in chain for frame in _frames(x))
  if loading or isinstance(e, SyntaxError):
    # The config file's own exception, not absl's and ml_collections' re-raises of it.
    original = next((x for x in chain if not isinstance(x, flags.Error)
                     and not str(x).startswith("Error whilst parsing config file")), chain[-1])
    return _load_failure_message(flag, argument, original)
  if isinstance(e, (KeyError, AttributeError)):
    return _missing_field_message(flag, argument, chain, argv)
  if isinstance(e, config_flags.FlagOrderError):
    return _one_line(str(e)) + (f": give --{flag.name}=<config file> first, then its overrides."
                                if "before a value" in str(e) else "")
  return f"--{flag.name}={argument}: {_exception_text(e)}"


def _missing_field_message(flag, argument: str, chain, argv: Sequence[str]) -> str:
  """An override naming no field (a locked config does not take new ones): ml_collections'
  "Did you mean" suggestion when it has one, else the fields there are."""
  key = next((x.args[0] for x in reversed(chain) if isinstance(x, KeyError) and x.args), None)
  suggestion = next((m.group(1) for m in (re.search(r'Did you mean "(.+?)" instead of', str(x))
                                          for x in chain) if m), None)
  overrides = [a.lstrip("-") for a in argv[1:] if re.match(rf"--?{re.escape(flag.name)}\.", a)]
  for override in overrides:
    field, eq, value = override.partition("=")
    parts = field.split(".")
    if key not in parts[1:]:
      continue
    i = parts.index(key, 1)
    parent = ".".join(parts[:i])
    message = (f"--{override}: {parent} has no field {key!r} (in {argument}; an override "
               "cannot add fields).")
    if suggestion:
      fixed = ".".join(parts[:i] + [suggestion] + parts[i + 1:]) + eq + value
      return f"{message} Did you mean {suggestion!r}? (--{fixed})"
    try:
      fields = sorted(_get_path(flag.parser.parse(argument), ".".join(parts[1:i])).keys())
      return f"{message} Its fields: {', '.join(fields)}."
    except Exception:  # pylint: disable=broad-except
      return message
  return f"--{flag.name}={argument}: no field {key!r}" + (
      f". Did you mean {suggestion!r}?" if suggestion else "")


def _load_failure(value) -> Optional[BaseException]:
  """The error of a config file that failed to load: ml_collections defers an IOError of the
  loading to the config's first use (its stand-in raises on any attribute)."""
  try:
    getattr(value, "lock", None)
  except OSError as e:
    return e.__cause__ or e
  return None


def _load_failure_message(flag, argument: str, error: BaseException) -> str:
  """--<config>=<file> that does not exist, is no config file, or raises when loaded."""
  given = f"--{flag.name}={argument}"
  path = argument.split(":", 1)[0]
  if not os.path.exists(path):
    folder = os.path.dirname(path) or "."
    candidates = [p for p in sorted(glob.glob(os.path.join(folder, "*.py")))
                  if _defines_get_config(p)]
    names = {os.path.basename(p): p for p in candidates}
    close = [names[n] for n in difflib.get_close_matches(os.path.basename(path), names, n=3,
                                                         cutoff=0.75)]
    if close:
      hint = f" Did you mean {' or '.join(map(repr, close))}?"
    elif candidates:
      hint = f" The config files in {folder}: {', '.join(os.path.basename(p) for p in candidates)}."
    else:
      hint = " Give the path of a config file (configs/*.py), relative to this folder or absolute."
    return f"{given}: no such file ({os.path.abspath(path)}).{hint}"
  if os.path.isdir(path):
    return f"{given}: {path} is a folder; give a config file (a .py file with get_config())."
  if isinstance(error, AttributeError) and getattr(error, "name", None) == "get_config":
    return (f"{given}: {path} defines no get_config(), so it is not an experiment config; give "
            "one that does (e.g. configs/rankclip_synthetic.py).")
  where = _where_in_file(error, path)
  hint = ""
  if isinstance(error, TypeError) and ":" in argument and not where:
    hint = "; the text after ':' is passed to get_config() as its argument"
  return (f"{given}: loading the config raised {_exception_text(error)}"
          f"{f' (at {where})' if where else ''}{hint}.")


def _defines_get_config(path: str) -> bool:
  try:
    with open(path, encoding="utf-8") as f:
      return "def get_config(" in f.read()
  except OSError:
    return False


def _where_in_file(error: BaseException, path: str) -> str:
  """file:line of the config file's code (or code beside it) that raised `error`."""
  if isinstance(error, SyntaxError) and error.filename:
    return f"{_short(error.filename)}:{error.lineno}"
  folder = os.path.dirname(os.path.realpath(path))
  lines = [(frame.f_code.co_filename, line)
           for frame, line in traceback.walk_tb(error.__traceback__)
           if os.path.realpath(frame.f_code.co_filename).startswith(folder + os.sep)]
  return f"{_short(lines[-1][0])}:{lines[-1][1]}" if lines else ""


def _short(filename: str) -> str:
  rel = os.path.relpath(filename)
  return filename if rel.startswith("..") else rel

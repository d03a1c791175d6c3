"""User-facing errors, and the one place that turns them into `error: ...`.

A `UserError` is a mistake in what the user gave (a config value, a data
folder, a list file, a code or checkpoint file, a flag): its message names the
key, file or file:line and says what to do. Entry points run their `main`
through `run`, which prints such an error as one line on stderr and exits with
status 2, with no traceback; any other exception is a bug in this code and
keeps its traceback.

The subclasses also derive from the built-in type callers used to catch
(ValueError, FileNotFoundError), so existing `except` clauses keep working.
"""

import signal
import sys

from absl import app, flags

EXIT_USER_ERROR = 2
# What a shell reports for a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


class UserError(Exception):
  """A mistake in the user's input; the message says what to do about it."""


class ConfigError(UserError, ValueError):
  """A configuration that cannot run; raised before anything is written."""


class DataError(UserError, ValueError):
  """A dataset, list file or split that cannot be used as given."""


class DataNotFoundError(UserError, FileNotFoundError):
  """A dataset folder or file that is not where the config says."""


class CheckpointError(UserError):
  """A run folder or checkpoint that cannot be restored."""


class MissingDependencyError(UserError, ImportError):
  """An optional package that this command needs and that is not installed."""


def one_line(error):
  """The message of `error` on one line (multi-line messages joined by '; ')."""
  parts = [part.strip() for part in str(error).splitlines()]
  return "; ".join(part for part in parts if part) or type(error).__name__


def fail(message):
  """Prints `error: message` on stderr and exits with EXIT_USER_ERROR."""
  sys.stderr.flush()
  print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def _config_override_error(error, argv):
  """The message for an unknown key in a `--config.<key>=value` override, or
  None when `error` is not about a key the user typed.

  ml_collections raises a bare AttributeError("'key'") while parsing the
  overrides; name the flag the user typed instead.
  """
  key = str(error).strip("\"'")
  typed = [
    arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("--") and "." in arg.split("=", 1)[0]
  ]
  culprit = next((flag for flag in typed if key in flag.lstrip("-").split(".")[1:]), None)
  if culprit is None:
    return None
  return (
    f"{culprit}: no such config key {key!r}; check the spelling against "
    "configs/default.py and the config file (data.* keys: docs/data.md)"
  )


def parse_flags(argv):
  """absl flags parser that reports every flag mistake as `error: ...`, exit 2.

  Covers absl's own flag errors (missing required flags, bad values) and the
  unknown keys ml_collections reports for `--config.<key>` overrides, which
  absl would otherwise let through as a traceback. Errors raised by the code
  of a config file keep their traceback.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    fail(f"{error} (see --helpshort)")
  except AttributeError as error:
    message = _config_override_error(error, argv)
    if message is None:
      raise
    fail(message)


_interrupt_requested = False


def _on_sigint(signum, frame):
  global _interrupt_requested
  _interrupt_requested = True
  raise KeyboardInterrupt


def check_interrupted():
  """Raises KeyboardInterrupt when Ctrl-C came but was lost.

  Python drops an exception raised inside a callback it cannot propagate from
  (the garbage collector's, which JAX registers, or a C library's), so a Ctrl-C
  that lands there would be ignored and the command would run on; long loops
  call this between steps to honour it.
  """
  if _interrupt_requested:
    raise KeyboardInterrupt


def _drop_lost_interrupts(previous):
  """An unraisable-exception hook that stays silent about the KeyboardInterrupt
  `check_interrupted` will raise again, and passes on everything else."""

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and _interrupt_requested):
      previous(unraisable)

  return hook


def run(main, interrupted=None):
  """absl.app.run(main) with user errors and Ctrl-C reported on one line.

  Args:
    main: the entry point's main(argv).
    interrupted: what to print after 'interrupted: ' on Ctrl-C (exit 130);
      None lets KeyboardInterrupt through with its traceback.
  """
  if interrupted is not None:
    signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _drop_lost_interrupts(sys.unraisablehook)
  try:
    app.run(main, flags_parser=parse_flags)
  except UserError as error:
    fail(error)
  except KeyboardInterrupt:
    if interrupted is None:
      raise
    print(f"interrupted: {interrupted}", file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)

"""The files a command reads and writes: no output overwrites an input, and an
output appears whole or not at all.

Every entry point names its inputs and outputs by flag and calls
`check_outputs` before it reads or writes anything; each output is then
written through `replaced`, a temporary file in the destination folder that
is renamed into place when it is complete and removed when anything fails.
Text the user gives (list files) is read with `read_text`.
"""

import contextlib
import os
import pathlib

from schn_jax import errors


class PathError(errors.UserError, ValueError):
  """An output path that clashes with an input or cannot be written."""


def _resolved(path):
  return pathlib.Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def _inside(path, folder):
  return path == folder or folder in path.parents


def inside(path, folder):
  """Whether `path` is `folder` or below it, symlinks and relative spellings resolved."""
  return _inside(_resolved(path), _resolved(folder))


def check_outputs(outputs, inputs=(), *, folders=(), writable=True):
  """Refuses outputs that would overwrite an input or that cannot be written.

  Args:
    outputs: (name, path) pairs of files the command writes; name is what the
      user typed (`--out`), path None when not given.
    inputs: (name, path) pairs of files or folders the command reads.
    folders: (description, path) pairs of input folders whose every file
      belongs to the input (a run folder): no output may go inside them.
    writable: also check that each output can be written (`check_writable`).

  Raises:
    PathError: naming both flags, or the output and what to do.
  """
  outputs = [(name, _resolved(path), path) for name, path in outputs if path is not None]
  inputs = [(name, _resolved(path), path) for name, path in inputs if path is not None]
  folders = [(name, _resolved(path), path) for name, path in folders if path is not None]
  for i, (name, out, given) in enumerate(outputs):
    for input_name, source, source_given in inputs:
      if out == source or (_inside(source, out) and os.path.isdir(source)):
        raise PathError(
          f"{name}={given} would overwrite {input_name}={source_given}: write to another path."
        )
    for folder_name, folder, folder_given in folders:
      if _inside(out, folder):
        raise PathError(f"{name}={given} is inside {folder_name} {folder_given}: write outside it.")
    for other_name, other, _ in outputs[i + 1 :]:
      if out == other:
        raise PathError(f"{name} and {other_name} both name {given}: give them different paths.")
    if writable:
      check_writable(name, given)


def check_writable(name, path):
  """Refuses an output file whose folder is missing or read-only, or that is a folder."""
  path = pathlib.Path(os.path.expanduser(str(path)))
  parent = path.parent if str(path.parent) else pathlib.Path(".")
  try:
    path.stat()
  except FileNotFoundError:
    pass
  except OSError as error:
    raise PathError(f"{name}={path}: cannot write it ({error.strerror or error}).") from None
  if path.is_dir():
    raise PathError(f"{name}={path} is a folder: give a file name (for example {path}/out).")
  if not parent.is_dir():
    raise PathError(f"{name}={path}: no such folder {parent}; create it first.")
  if not os.access(parent, os.W_OK):
    raise PathError(f"{name}={path}: the folder {parent} is not writable; write elsewhere.")


@contextlib.contextmanager
def replaced(path, name="output"):
  """Yields a temporary path beside `path` (same suffix) to write; when the
  block ends without an error it is renamed to `path`, otherwise removed.

  An OSError while writing (disk full, a name the OS refuses) becomes a
  PathError naming `name` and `path`.
  """
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
  try:
    yield tmp
    os.replace(tmp, path)
  except OSError as error:
    raise PathError(f"{name}={path}: cannot write it ({error.strerror or error}).") from None
  finally:
    with contextlib.suppress(OSError):
      tmp.unlink()


def write_text(path, text, name="output"):
  """Writes `text` (UTF-8) to `path` through `replaced`."""
  with replaced(path, name) as tmp:
    tmp.write_text(text, encoding="utf-8")


def read_text(path, what="file"):
  """The text of a user's file, read as UTF-8 with or without a byte-order mark.

  Raises:
    errors.DataError: naming the file, the line and what to do, when it is not
      UTF-8 (UTF-16 or Latin-1, say).
  """
  data = pathlib.Path(path).read_bytes()
  if data.startswith((b"\xff\xfe", b"\xfe\xff")):
    raise errors.DataError(
      f"{path}: this {what} is UTF-16; save it as UTF-8 (for example with "
      f"`iconv -f UTF-16 -t UTF-8 {path}`)."
    )
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as error:
    line = data[: error.start].count(b"\n") + 1
    raise errors.DataError(
      f"{path}:{line}: this {what} is not UTF-8 (byte {data[error.start]:#04x}); save it "
      f"as UTF-8 (for example `iconv -f LATIN1 -t UTF-8 {path}`)."
    ) from None

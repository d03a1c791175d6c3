"""Packs fixture folders into the layout kept in this repository (parity/fixtures.py).

    python -m schn_jax.parity.pack SOURCE TARGET

Every fixture folder under SOURCE is written to the same relative place under
TARGET; README.md files above the folders are copied too.
"""

import pathlib
import shutil
import sys

from schn_jax import errors, files
from schn_jax.parity import fixtures


def main(argv):
  if len(argv) != 3:
    print(__doc__.strip(), file=sys.stderr)
    return errors.EXIT_USER_ERROR
  source, target = pathlib.Path(argv[1]), pathlib.Path(argv[2])
  if files.inside(target, source) or files.inside(source, target):
    raise files.PathError(f"{target} and {source} overlap: pack into a separate folder.")
  if not source.is_dir():
    raise errors.UserError(f"{source}: no such folder of fixtures.")
  for directory in fixtures.find_fixture_dirs(source):
    fixtures.pack(directory, target / directory.relative_to(source))
  for readme in source.rglob("README.md"):
    destination = target / readme.relative_to(source)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(readme, destination)
  return 0


if __name__ == "__main__":
  errors.run(main)

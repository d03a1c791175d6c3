"""Check schn-jax against captures of the official PyTorch implementation.

    python -m schn_jax.parity.check                  # every fixture in the repository
    python -m schn_jax.parity.check DIR [DIR ...]    # fixture folders, or folders above them

With no DIR, the repository's fixtures/ are checked, and the fixtures in
../shared/fixtures beside the checkout as well when it is there (those not packed
into the repository already). In each fixture folder the weights are
rebuilt from the recipe and converted to our parameter tree; a step fixture is
checked by parity/step.py, a trajectory fixture by parity/trajectory.py.

Prints the largest error of every quantity; exits 1 on any mismatch beyond
tolerance, 2 on a malformed folder.
"""

import sys

import jax

from schn_jax import errors
from schn_jax.parity import fixtures, step, trajectory
from schn_jax.parity.fixtures import Fixture


def check_fixture(directory):
  """All comparisons for one fixture folder."""
  fixture = Fixture(directory)
  return (step if fixture.kind == "step" else trajectory).check(fixture)


def report(directory, results, out=None):
  out = out or sys.stdout
  print(f"== {directory}", file=out)
  for c in results:
    status = "MISMATCH" if not c.ok else ("info" if c.informational else "ok")
    measure = (
      f"{int(c.error)} differing"
      if c.exact
      else f"{c.measure} {c.error:.3e}  (tol {c.tolerance:.1e})"
    )
    print(f"  {status:8s} {c.quantity:40s} {measure}", file=out)
  for dtype in ("float64", "float32"):
    ratios = [
      (c.error / c.tolerance, c.quantity)
      for c in results
      if c.quantity.startswith(dtype) and not c.exact and not c.informational and c.tolerance > 0
    ]
    if ratios:
      worst, quantity = max(ratios)
      print(f"  worst {dtype} error/tolerance: {worst:.3f} ({quantity})", file=out)


def main(argv):
  # Parity needs full float32 matmuls on every backend (GPU/TPU default to lower precision).
  jax.config.update("jax_default_matmul_precision", "highest")
  failed = 0
  try:
    directories = (
      [d for root in argv[1:] for d in fixtures.find_fixture_dirs(root)]
      if argv[1:]
      else fixtures.all_fixture_dirs()
    )
    for directory in directories:
      results = check_fixture(directory)
      report(directory, results)
      failed += sum(not c.ok for c in results)
  except errors.UserError as e:
    print(f"error: {errors.one_line(e)}", file=sys.stderr)
    return errors.EXIT_USER_ERROR
  print(
    f"{len(directories)} fixture folder(s) checked: "
    + ("all quantities within tolerance" if not failed else f"{failed} mismatch(es)")
  )
  return 1 if failed else 0


if __name__ == "__main__":
  errors.run(main)  # absl flags, as every entry point; main's return value is the exit status

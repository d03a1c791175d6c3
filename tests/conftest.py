# schn_jax first: importing it chooses XLA:CPU's float32 kernels, which must happen
# before any test starts JAX's backends (schn_jax/xla_cpu.py).
import schn_jax  # noqa: F401  isort: skip

import gc

import jax
import pytest

from schn_jax.parity import fixtures


@pytest.fixture(scope="session")
def fixtures_root():
  """The repository's step fixtures: part of the repository, so a missing one fails."""
  root = fixtures.REPOSITORY_FIXTURES / "reference"
  assert root.is_dir(), f"{root} is missing from this checkout"
  return root


def pytest_generate_tests(metafunc):
  """Tests that take `fixture_dir` (`trajectory_dir`) run once per step (trajectory)
  fixture folder: the repository's, and the shared ones beside the checkout not packed
  into it."""
  for name, kind in (("fixture_dir", "reference"), ("trajectory_dir", "trajectory")):
    if name in metafunc.fixturenames:
      dirs = fixtures.all_fixture_dirs(kind)
      ids = [
        (
          d.relative_to(fixtures.REPOSITORY_FIXTURES)
          if d.is_relative_to(fixtures.REPOSITORY_FIXTURES)
          else "shared" / d.relative_to(fixtures.SHARED_FIXTURES)
        ).as_posix()
        for d in dirs
      ]
      metafunc.parametrize(name, dirs, ids=ids)


@pytest.fixture(autouse=True)
def _release_compiled_programs():
  """A worker runs many tests in one process, and JAX keeps every program it compiled
  (an AlexNet trajectory's take gigabytes): drop them after each test so that the
  worker's memory does not grow test by test."""
  yield
  jax.clear_caches()
  gc.collect()


def pytest_terminal_summary(terminalreporter):
  step, trajectory = (len(fixtures.all_fixture_dirs(kind)) for kind in ("reference", "trajectory"))
  terminalreporter.write_line(
    f"parity fixtures: {step} step, {trajectory} trajectory (repository and ../shared)"
  )

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "reference"
TRAJECTORIES = REPO.parent / "shared" / "fixtures" / "trajectory"


@pytest.fixture(scope="session")
def fixtures_root():
  if not FIXTURES.is_dir():
    pytest.skip(f"reference fixtures not found at {FIXTURES}")
  return FIXTURES


def pytest_generate_tests(metafunc):
  """Tests that take `fixture_dir` (`trajectory_dir`) run once per step (trajectory)
  fixture folder."""
  from schn_jax.interop.fixtures import find_fixture_dirs  # pylint: disable=g-import-not-at-top

  for name, root in (("fixture_dir", FIXTURES), ("trajectory_dir", TRAJECTORIES)):
    if name in metafunc.fixturenames:
      dirs = find_fixture_dirs(root) if root.is_dir() else []
      metafunc.parametrize(name, dirs, ids=[d.relative_to(root).as_posix() for d in dirs])

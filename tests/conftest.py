import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "reference"


@pytest.fixture(scope="session")
def fixtures_root():
  if not FIXTURES.is_dir():
    pytest.skip(f"reference fixtures not found at {FIXTURES}")
  return FIXTURES


def pytest_generate_tests(metafunc):
  """Tests that take `fixture_dir` run once per variant folder under the fixtures root."""
  if "fixture_dir" in metafunc.fixturenames:
    from schn_jax.interop.fixtures import find_fixture_dirs  # pylint: disable=g-import-not-at-top
    dirs = find_fixture_dirs(FIXTURES) if FIXTURES.is_dir() else []
    metafunc.parametrize("fixture_dir", dirs, ids=[d.relative_to(FIXTURES).as_posix() for d in dirs])

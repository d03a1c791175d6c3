import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "reference"


@pytest.fixture(scope="session")
def fixtures_root():
  if not FIXTURES.is_dir():
    pytest.skip(f"reference fixtures not found at {FIXTURES}")
  return FIXTURES

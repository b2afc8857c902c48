"""Shared test helpers: the optional ../shared data folder, which users do not have."""
import os

import pytest

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


def shared_path(*parts: str) -> str:
  """Path under ../shared, skipping the test with a reason when it is absent."""
  path = os.path.join(SHARED, *parts)
  if not os.path.exists(path):
    pytest.skip(f"needs the development data at {path} (not shipped to users)")
  return path

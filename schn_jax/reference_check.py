"""Alias of `python -m schn_jax.parity.check` (its docstring has the usage)."""

from schn_jax import errors
from schn_jax.parity.check import main

if __name__ == "__main__":
  errors.run(main)

"""Flax modules, one file per space of SCHN."""

from schn_jax.models.discriminator import Discriminator
from schn_jax.models.schn import CYCLE_WIRING, SCHN, VARIANTS, CycleNet

__all__ = ["CYCLE_WIRING", "CycleNet", "Discriminator", "SCHN", "VARIANTS"]

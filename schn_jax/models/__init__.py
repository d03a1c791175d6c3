"""Flax modules, one file per space of SCHN."""

from schn_jax.models.discriminator import Discriminator
from schn_jax.models.schn import CYCLE_WIRING, SCHN, VARIANTS, CycleNet, variables_template

__all__ = ["CYCLE_WIRING", "CycleNet", "Discriminator", "SCHN", "VARIANTS", "variables_template"]

"""schn-jax: Semantically Cycle-consistent Hashing Networks in JAX/Flax."""

from schn_jax import xla_cpu

xla_cpu.use_accurate_kernels()

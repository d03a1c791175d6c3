"""schn-jax: Semantically Cycle-consistent Hashing Networks in JAX/Flax."""

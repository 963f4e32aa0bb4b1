"""EDSR and MDSR super-resolution networks in JAX/Flax."""

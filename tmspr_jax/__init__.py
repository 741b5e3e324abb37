"""tmspr_jax: T-MSPR (human semantic perception and recovery for occluded person re-ID) in JAX/Flax."""

__version__ = "0.1.0"

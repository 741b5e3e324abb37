"""tmspr_jax/models"""

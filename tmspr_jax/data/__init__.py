"""tmspr_jax/data"""

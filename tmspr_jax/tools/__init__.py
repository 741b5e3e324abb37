"""tmspr_jax/tools"""

"""The input path: dataset builders (TFDS), sources, parsing targets, the training views, the PK sampler, the grain
pipeline. Making data (the synthetic set, a config's data on disk) lives in :mod:`tmspr_jax.datagen`."""

"""Making data, apart from the input path (:mod:`tmspr_jax.data`) that reads it.

* :mod:`~tmspr_jax.datagen.synthetic`: the synthetic occluded re-ID set of the demo and the tests (Market-1501 layout,
  LIP label maps), drawn by :mod:`~tmspr_jax.datagen.appearance`, :mod:`~tmspr_jax.datagen.figure` and
  :mod:`~tmspr_jax.datagen.occluders`; ``python -m tmspr_jax.tools.synthetic`` is its command.
* :mod:`~tmspr_jax.datagen.ensure`: makes sure what a config needs on disk exists before a run (the demo's set
  generated, datasets built from their release folders, parsing targets computed).
"""

"""PyTorch oracles: our own plain PyTorch implementations of the reference computations, used by the parity tests,
the comparison tool and the benchmarks.

* :mod:`tmspr_jax.oracles.tmspr`: the T-MSPR / TransReID forward with the reference's state-dict key names;
* :mod:`tmspr_jax.oracles.losses`: the reference's loss formulas;
* :mod:`tmspr_jax.oracles.schp`: SCHP's human parser and its extractor's preprocessing (for the parser's parity tests
  and ``tools.benchmark_parser``).

``torch`` is an optional extra (``pip install -e ".[torch]"``): nothing outside this package imports it at module level,
and this ``__init__`` imports none of the oracles.
"""

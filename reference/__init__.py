"""NumPy + Numba reference of minibigr's three algorithmic cores (docs/method.md §1.1, §4, §5).

Written to be read next to docs/method.md: float64 everywhere, randomness passed in as explicit uniform
or Gumbel arrays, Numba kernels only for the loops that matter (the reverse-chain step and the
per-row top-k selection). It never imports torch or minibigr, so the property tests in tests/
compare two independent implementations.
"""

try:
    import numba  # noqa: F401
except ImportError:
    raise ImportError("the reference implementation needs numba (and scipy): pip install -e \".[reference]\" "
                      "(or pip install numba scipy)") from None

from . import quantizer, sampler, transcoder  # noqa: E402

__all__ = ["quantizer", "sampler", "transcoder"]

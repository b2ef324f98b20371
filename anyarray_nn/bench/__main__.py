"""``python -m anyarray_nn.bench`` is ``anyarray-bench``."""

from .cli import run_main

run_main()

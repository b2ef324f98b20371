"""The harness behind the ``anyarray-bench`` command: cases, timing, reports.

See docs/benchmarks.md. Speed is measured here, never asserted in tests.
"""

from .cases import Case, all_cases, select
from .harness import Settings, run

__all__ = ["Case", "all_cases", "select", "Settings", "run"]

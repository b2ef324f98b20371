"""Learning-rate schedules: functions of the epoch (or step) index t, starting at 0.

Use one with ``train.LearningRateSchedule(schedule)``, or call it yourself. Reducing the rate
when the validation loss stops improving depends on training, so it is a callback:
``train.ReduceOnPlateau``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

Schedule = Callable[[int], float]


def constant(lr: float) -> Schedule:
    """lr at every t."""
    return lambda t: lr


def step_decay(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """lr * gamma ** (t // step_size): divide by 1/gamma every ``step_size`` epochs."""
    if step_size < 1:
        raise ValueError(f"step_decay: expected step_size >= 1, got {step_size}")
    return lambda t: lr * gamma ** (t // step_size)


def cosine(lr: float, total: int, min_lr: float = 0.0) -> Schedule:
    """Half a cosine from lr at t = 0 to min_lr at t = total (and min_lr after)."""
    if total < 1:
        raise ValueError(f"cosine: expected total >= 1, got {total}")
    return lambda t: min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))


def exponential(lr: float, gamma: float) -> Schedule:
    """lr * gamma ** t."""
    if not 0 < gamma <= 1:
        raise ValueError(f"exponential: expected 0 < gamma <= 1, got {gamma}")
    return lambda t: lr * gamma ** t


def piecewise_linear(lr: float, points: Sequence[tuple[float, float]]) -> Schedule:
    """lr times a factor interpolated linearly between ``points`` (t, factor), t increasing;
    before the first t and after the last, the nearest factor holds. The triangle of the
    fast CIFAR-10 recipes over T steps: ``[(0, 0.2), (0.23 * T, 1.0), (T, 0.07)]``."""
    ts = [float(t) for t, _ in points]
    factors = [float(f) for _, f in points]
    if (not ts or any(b <= a for a, b in zip(ts, ts[1:]))
            or not all(math.isfinite(v) for v in ts + factors) or min(factors) < 0):
        raise ValueError(f"piecewise_linear: expected (t, factor) points with t finite and "
                         f"increasing and factors finite and >= 0, got {list(points)!r}")

    def interpolated(t: int) -> float:
        if t <= ts[0]:
            return lr * factors[0]
        for (t0, f0), (t1, f1) in zip(zip(ts, factors), zip(ts[1:], factors[1:])):
            if t <= t1:
                return lr * (f0 + (f1 - f0) * (t - t0) / (t1 - t0))
        return lr * factors[-1]
    return interpolated


def warmup(schedule: Schedule, steps: int, start_factor: float = 0.1) -> Schedule:
    """Ramp linearly from ``start_factor * schedule(0)`` up to ``schedule(steps)`` over the
    first ``steps`` values of t, then follow ``schedule``."""
    if steps < 1 or not 0 <= start_factor <= 1:
        raise ValueError(f"warmup: expected steps >= 1 and 0 <= start_factor <= 1, got "
                         f"steps={steps}, start_factor={start_factor}")

    def warmed(t: int) -> float:
        if t >= steps:
            return schedule(t)
        start = start_factor * schedule(0)
        return start + (schedule(steps) - start) * t / steps
    return warmed

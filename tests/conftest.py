"""Shared fixtures: one ``xp`` fixture over every backend, and the PyTorch reference."""

from __future__ import annotations

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn.backend import BACKEND_NAMES, BackendError, get_backend


def _skip_reason(name: str) -> str | None:
    try:
        get_backend(name)
    except BackendError as exc:
        return str(exc).split(". ")[0]  # the first sentence says why; the rest is install help
    return None


@pytest.fixture(params=BACKEND_NAMES)
def xp(request):
    """The array namespace of each backend, made active for the test's duration.

    numpy and array_api_strict always run; torch when installed; cupy when a GPU is present.
    Inside the test, ``ann.asarray(host_array)`` lands on this backend.
    """
    reason = _skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    with ann.using(request.param) as backend:
        yield backend.xp


@pytest.fixture
def backend_name(xp):
    """The name of the backend the ``xp`` fixture made active."""
    return ann.current_backend().name


@pytest.fixture
def torch():
    """PyTorch, the reference implementation; tests using it skip where it is not installed."""
    return pytest.importorskip("torch")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)




@pytest.fixture(autouse=True)
def _restore_global_state():
    """Tests (and doc examples) may call set_backend or seed: undo both afterwards."""
    from anyarray_nn import backend as B
    default, generator, state = B._default, B._rng, B._rng.bit_generator.state
    yield
    B._default, B._rng = default, generator
    generator.bit_generator.state = state  # loading a checkpoint sets it in place

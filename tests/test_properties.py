"""Property tests (hypothesis): invariants the kernels must keep for any input."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from anyarray_nn import functional as F

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def logits_and_labels(draw):
    n, c = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    z = draw(arrays(np.float64, (n, c), elements=finite))
    t = draw(arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    return z, t


@settings(max_examples=60, deadline=None)
@given(logits_and_labels(), finite)
def test_cross_entropy_is_shift_invariant_and_its_gradient_rows_sum_to_zero(zt, shift):
    z, t = zt
    loss = float(F.softmax_cross_entropy_forward(z, t))
    assert loss >= 0.0 and np.isfinite(loss)
    assert np.isclose(float(F.softmax_cross_entropy_forward(z + shift, t)), loss,
                      rtol=1e-9, atol=1e-9)
    grad = F.softmax_cross_entropy_backward(z, t)
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.data())
def test_dense_backward_is_linear_in_dy(n, fin, fout, data):
    x = data.draw(arrays(np.float64, (n, fin), elements=finite))
    w = data.draw(arrays(np.float64, (fout, fin), elements=finite))
    dy1 = data.draw(arrays(np.float64, (n, fout), elements=finite))
    dy2 = data.draw(arrays(np.float64, (n, fout), elements=finite))
    combined = F.dense_backward(x, w, dy1 + 2.0 * dy2)
    separate = [a + 2.0 * b for a, b in zip(F.dense_backward(x, w, dy1), F.dense_backward(x, w, dy2))]
    for c, s in zip(combined, separate):
        np.testing.assert_allclose(c, s, rtol=1e-9, atol=1e-6)

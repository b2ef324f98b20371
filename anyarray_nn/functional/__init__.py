"""Pure kernels written only against the Python array API standard.

Every family is a ``*_forward`` / ``*_backward`` pair: inputs in, new arrays out, no state and
no writes into the inputs. The namespace comes from the inputs, so the same call runs on
NumPy, CuPy, PyTorch tensors and array-api-strict. On CuPy a few hot spots run one CUDA kernel
each instead, and on NumPy with numba the 2x2 max-pool, 3x3 convolutions (Winograd) and a
first layer's dX run compiled, all tested equal to the portable code, up to rounding where
sums are reordered (``_fast``, ``_cupy_kernels``, ``_numba_kernels``); ``portable_kernels()``
turns that off.
"""

from ._fast import portable_kernels
from .activation import (
    gelu_backward,
    gelu_forward,
    leaky_relu_backward,
    leaky_relu_forward,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    silu_backward,
    silu_forward,
    tanh_backward,
    tanh_forward,
)
from .conv import conv2d_backward, conv2d_forward
from .dense import dense_backward, dense_forward
from .loss import (
    cross_entropy_backward,
    cross_entropy_forward,
    mse_backward,
    mse_forward,
    one_hot,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .softmax import (
    log_softmax_backward,
    log_softmax_forward,
    softmax_backward,
    softmax_forward,
)
from .norm import (
    batchnorm_backward,
    batchnorm_forward,
    batchnorm_inference,
    batchnorm_update_running,
    dropout_backward,
    dropout_forward,
    groupnorm_backward,
    groupnorm_forward,
    layernorm_backward,
    layernorm_forward,
)
from .pool import (
    adaptive_avgpool2d_backward,
    adaptive_avgpool2d_forward,
    adaptive_maxpool2d_backward,
    adaptive_maxpool2d_forward,
    avgpool2d_backward,
    avgpool2d_forward,
    global_avgpool2d_backward,
    global_avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

__all__ = [
    "dense_forward", "dense_backward",
    "conv2d_forward", "conv2d_backward",
    "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward",
    "global_avgpool2d_forward", "global_avgpool2d_backward",
    "adaptive_avgpool2d_forward", "adaptive_avgpool2d_backward",
    "adaptive_maxpool2d_forward", "adaptive_maxpool2d_backward",
    "batchnorm_forward", "batchnorm_backward", "batchnorm_inference", "batchnorm_update_running",
    "dropout_forward", "dropout_backward",
    "layernorm_forward", "layernorm_backward", "groupnorm_forward", "groupnorm_backward",
    "relu_forward", "relu_backward",
    "leaky_relu_forward", "leaky_relu_backward",
    "tanh_forward", "tanh_backward",
    "sigmoid_forward", "sigmoid_backward",
    "gelu_forward", "gelu_backward",
    "silu_forward", "silu_backward",
    "softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
    "one_hot", "cross_entropy_forward", "cross_entropy_backward",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
    "mse_forward", "mse_backward",
    "portable_kernels",
]

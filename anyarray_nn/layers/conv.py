"""The convolution layer (NCHW)."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..errors import as_int, errors_named
from ..functional.conv import (
    PADDING_MODES,
    _conv2d_forward_with_patches,
    _pair,
    _stride_dilation,
    conv_output_size,
    conv_padding,
)
from .base import Layer, register


@register
class Conv2D(Layer):
    """2-D convolution: weights ``W`` (out_channels, in_channels / groups, kh, kw), bias ``b``.

    ``padding``: int, pair, ``"same"`` (stride 1) or ``"valid"``; ``stride`` and
    ``dilation``: int or pair. ``groups`` splits the channels into groups convolved apart
    (``groups == in_channels``: depthwise); ``padding_mode``: "zeros", "reflect",
    "replicate" or "circular", as ``torch.nn.Conv2d``. Inputs may be unbatched (C, H, W).
    The layer keeps the forward's patches (the im2col matrix; for groups, the padded input)
    for the weight gradient, trading memory for one fewer copy per step.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, *,
                 stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1,
                 bias: bool = True, padding_mode: str = "zeros", init: Any = "he",
                 name: str | None = None, backend: Any = None, dtype: str | None = None,
                 rng: Any = None) -> None:
        super().__init__(name)
        self._check_sizes(in_channels=in_channels, out_channels=out_channels)
        # Checked now, not at the first forward; errors say "Conv2D: stride: expected ...".
        with errors_named(self.type_name):
            kh, kw = _pair(kernel_size, "kernel_size")
            if kh < 1 or kw < 1:
                raise ValueError(f"Conv2D: expected kernel_size >= 1, got {kernel_size!r}")
            self.stride, self.dilation = _stride_dilation(stride, dilation)
            # Resolving reports a bad padding here too; "same" stays readable in configs.
            resolved = conv_padding(padding, (kh, kw), self.stride, self.dilation)
            self.groups = self._check_groups(groups, in_channels, out_channels)
            if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
                raise ValueError(f"Conv2D: padding_mode: expected one of "
                                 f"{', '.join(map(repr, PADDING_MODES))}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.in_channels, self.out_channels, self.bias = in_channels, out_channels, bias
        self.kernel_size = (kh, kw)
        self.padding = padding if isinstance(padding, str) else resolved
        self.init = self._init_name(init)
        # As torch: fan-in counts the input channels one output sees, those of its group.
        per_group = in_channels // self.groups
        fan_in, fan_out = per_group * kh * kw, out_channels * kh * kw
        self.params["W"] = self._new_param(init, (out_channels, per_group, kh, kw), fan_in,
                                           fan_out, backend, dtype, rng)
        if bias:
            self.params["b"] = self._new_param("zeros", (out_channels,), fan_in, fan_out,
                                               backend, dtype, rng)

    def probe_elements(self, shapes: Any) -> int:
        """The padded input, the patch matrix and the output of one sample, whichever is
        largest (padding can make them far larger than the input)."""
        c, h, w = shapes[0][-3:]
        kh, kw = self.kernel_size
        (sh, sw), (dh, dw) = self.stride, self.dilation
        top, bottom, left, right = conv_padding(self.padding, self.kernel_size, self.stride,
                                                self.dilation)
        ho = max(0, conv_output_size(h, kh, sh, top, bottom, dh))
        wo = max(0, conv_output_size(w, kw, sw, left, right, dw))
        return max(super().probe_elements(shapes), c * (h + top + bottom) * (w + left + right),
                   (c * kh * kw + self.out_channels) * ho * wo)

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        y, patches = _conv2d_forward_with_patches(x, self.params["W"], self.params.get("b"),
                                                  self.stride, self.padding, self.dilation,
                                                  self.groups, self.padding_mode)
        return y, (x, patches)

    def _backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        x, patches = cache
        dx, dw, db = F.conv2d_backward(x, self.params["W"], dy, self.stride, self.padding,
                                       self.dilation, self.groups, self.padding_mode,
                                       patches=patches, input_grad=input_grad)
        return dx, ({"W": dw, "b": db} if self.bias else {"W": dw})

    def get_config(self) -> dict[str, Any]:
        padding = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": padding, "dilation": list(self.dilation), "groups": self.groups,
                "padding_mode": self.padding_mode, "bias": self.bias, "init": self.init,
                "name": self.name}

    @staticmethod
    def _check_groups(groups: Any, in_channels: int, out_channels: int) -> int:
        """``groups`` as an int >= 1 that divides both channel counts."""
        value = as_int(groups)
        if value is None or value < 1:
            raise ValueError(f"Conv2D: groups: expected an int >= 1, got {groups!r}")
        if in_channels % value or out_channels % value:
            raise ValueError(f"Conv2D: groups: expected a divisor of in_channels {in_channels} "
                             f"and out_channels {out_channels}, got {value}")
        return value

"""Layer classes: thin objects that own parameters and call the kernels of ``functional``."""

from .activation import GELU, LeakyReLU, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Tanh
from .base import Layer, layer_class, register
from .conv import Conv2D
from .dense import Dense
from .merge import Add, Concatenate, Identity, Scale
from .norm import BatchNorm1D, BatchNorm2D, Dropout, GroupNorm, LayerNorm
from .pool import (AdaptiveAvgPool2D, AdaptiveMaxPool2D, AvgPool2D, GlobalAvgPool2D,
                   MaxPool2D)
from .reshape import Flatten

__all__ = ["Layer", "register", "layer_class", "Dense", "ReLU", "LeakyReLU", "Tanh",
           "Sigmoid", "Flatten", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D",
           "AdaptiveAvgPool2D", "AdaptiveMaxPool2D", "BatchNorm1D", "BatchNorm2D",
           "Dropout", "GELU", "SiLU", "LayerNorm", "GroupNorm", "Softmax", "LogSoftmax",
           "Add", "Concatenate", "Identity", "Scale"]

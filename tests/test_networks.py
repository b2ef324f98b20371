"""The course networks: sizes, whole-network gradients, and one training step equal to PyTorch's."""

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn.networks import NETWORKS, cifar10_net, mnist_net
from helpers import assert_close, host

from anyarray_nn.bench.cases import INPUT_SHAPES as INPUTS, torch_twin


def test_mnist_net_has_the_course_parameter_count():
    assert mnist_net().num_params() == 14_682
    assert cifar10_net().num_params() == 3 * 16 * 25 + 16 + 16 * 16 * 25 + 16 + 4096 * 10 + 10


@pytest.mark.parametrize("name", NETWORKS)
def test_networks_produce_logits(name, xp):
    model = NETWORKS[name](rng=0)
    x = ann.asarray(np.zeros((2, *INPUTS[name])), dtype="float32")
    assert tuple(model.forward(x).shape) == (2, 10)


def test_mnist_net_whole_network_gradient_check(xp, rng):
    model = mnist_net(dtype="float64", rng=0)
    x = ann.asarray(rng.standard_normal((2, 1, 28, 28)))
    labels = ann.asarray(np.array([3, 7]))
    report = ann.check_gradients(model, x, loss=ann.losses.SoftmaxCrossEntropy(), target=labels,
                                 max_checks=12)
    assert report.passed, str(report)


@pytest.mark.parametrize("name", NETWORKS)
def test_training_steps_equal_pytorch(torch, rng, name):
    """Three SGD steps (classic momentum, weight decay) of each course network, float64."""
    model = NETWORKS[name](dtype="float64", rng=0)
    reference = torch_twin(model, torch)
    opt = ann.optim.SGD(model, lr=0.01, momentum=0.9, weight_decay=1e-3, form="classic")
    topt = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
    loss_fn = ann.losses.SoftmaxCrossEntropy()
    for _ in range(3):
        x = np.maximum(rng.standard_normal((4, *INPUTS[name])), 0.0)  # ties in the pools
        labels = rng.integers(0, 10, 4)
        loss = loss_fn.forward(model.forward(x, train=True), labels)
        model.backward(loss_fn.backward())
        opt.step()
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(reference(torch.tensor(x)), torch.tensor(labels))
        tloss.backward()
        topt.step()
        assert float(loss) == pytest.approx(tloss.item(), rel=1e-10)
    names = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}
    tparams = dict(reference.named_parameters())
    for key, value in model.params().items():
        layer, param = key.split(".")
        assert_close(value, tparams[f"layers.{layer}.{names[param]}"], rtol=1e-9, atol=1e-11)
    for key, value in model.buffers().items():  # batch norm's running statistics
        layer, buffer = key.split(".")
        assert_close(value, reference.get_buffer(f"layers.{layer}.{buffer}"), rtol=1e-9,
                     atol=1e-11)

"""The radial MLP's explicit passes (pre-activations kept, scratch space, hand-written backward
pass) against its definition, differentiated by autograd."""
import pytest
import torch

from ase_equivariant.nn.activations import ACTIVATIONS, ScaledActivation
from ase_equivariant.nn.mlp import RadialMLP
from ase_equivariant.scratch import scratch


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivatives_equal_autograd(name):
    act = ScaledActivation(name, 1.3)
    x = torch.randn(40, 5, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(40, 5, dtype=torch.float64)
    (want,) = torch.autograd.grad(act.f(x), x, grad)
    out = torch.empty_like(grad)
    assert act.derivative_into(grad, x.detach(), out).data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, want, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(act.f_into(x.detach(), torch.empty_like(grad)), act.f(x).detach(), rtol=0, atol=0)


def work(name, *shape):
    return scratch(f"test.{name}", torch.Size(shape).numel(), torch.float64, "cpu").view(shape)


@pytest.mark.parametrize("sizes", [[8, 16, 12, 20], [8, 16, 20], [8, 20]])
@pytest.mark.parametrize("frozen", [True, False])
def test_hidden_layers_and_their_backward_pass_equal_autograd(sizes, frozen):
    """Two, one and no hidden layers; with frozen weights (inference) and with weights that need
    gradients (training): the activations, the input's gradient and each weight's gradient."""
    torch.manual_seed(0)
    mlp = RadialMLP(sizes, ScaledActivation("silu", 1.7)).double().requires_grad_(not frozen)
    hidden_params = list(mlp.weights)[:-1]
    x = torch.randn(30, sizes[0], dtype=torch.float64, requires_grad=True)
    pre = [torch.empty(30, width, dtype=torch.float64) for width in sizes[1:-1]]
    with torch.no_grad():
        hidden = mlp.hidden(x.detach(), pre, work).clone()
        grad = torch.randn_like(hidden)
        grad_x, grad_weights = mlp.hidden_backward(grad, x.detach(), pre, [not frozen] * len(hidden_params), work)
    # by definition, recorded by autograd: x W / sqrt(n_in), then the scaled activation, whose
    # scale :meth:`hidden` leaves to the output layer on the last hidden layer
    want = x
    for k, w in enumerate(hidden_params):
        scale = 1.7 if k + 1 < len(hidden_params) else 1.0
        want = torch.nn.functional.silu(want @ w / w.shape[0] ** 0.5) * scale
    torch.testing.assert_close(hidden, want.detach(), rtol=1e-14, atol=1e-14)
    if not hidden_params:  # no hidden layer: the identity, whose gradient is the output's
        torch.testing.assert_close(grad_x, grad, rtol=0, atol=0)
        return
    expected = torch.autograd.grad(want, [x] + ([] if frozen else hidden_params), grad)
    torch.testing.assert_close(grad_x, expected[0], rtol=1e-13, atol=1e-13)
    if frozen:
        assert grad_weights == [None] * len(hidden_params)
    for got, reference in zip(grad_weights, expected[1:]):
        torch.testing.assert_close(got, reference, rtol=1e-13, atol=1e-13)

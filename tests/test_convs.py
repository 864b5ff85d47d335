"""common.convs: strided convolutions as matmuls give the convolution's outputs and gradients."""
from __future__ import annotations

import torch

from common import modeldir
from common.convs import MatmulConv1d, convs_as_matmuls


def test_outputs_and_gradients_equal_conv1d_in_float32():
    torch.manual_seed(0)
    for in_ch, k, stride, bias in [(1, 10, 5, False), (8, 3, 2, True), (8, 2, 2, False)]:
        conv = torch.nn.Conv1d(in_ch, 16, k, stride=stride, bias=bias)
        mm = MatmulConv1d(in_ch, 16, k, stride=stride, bias=bias)
        mm.load_state_dict(conv.state_dict())
        x1 = torch.randn(3, in_ch, 401, requires_grad=True)
        x2 = x1.detach().clone().requires_grad_(True)
        a, b = conv(x1), mm(x2)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        a.square().sum().backward()
        b.square().sum().backward()
        torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(mm.weight.grad, conv.weight.grad, rtol=1e-4, atol=1e-3)


def test_the_matmul_is_as_accurate_as_the_convolution_in_float32():
    """Against a float64 reference, the matmul's float32 error is of the convolution's own size (they add the
    same products in different orders, so they need not be bit-identical)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(1, 128, 10, stride=5)
    mm = MatmulConv1d(1, 128, 10, stride=5)
    mm.load_state_dict(conv.state_dict())
    x = torch.randn(2, 1, 32_000)
    with torch.inference_mode():
        ref = torch.nn.functional.conv1d(x.double(), conv.weight.double(), conv.bias.double(), stride=5)
        conv_err = (conv(x).double() - ref).abs().max().item()
        mm_err = (mm(x).double() - ref).abs().max().item()
    assert mm_err <= 2 * max(conv_err, 1e-7), (mm_err, conv_err)


def test_swap_shares_parameters_and_keeps_the_state_dict():
    from transformers import Wav2Vec2ForCTC

    model = Wav2Vec2ForCTC(modeldir.tiny_config(12, 11))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    assert convs_as_matmuls(model) == len(model.config.conv_dim)
    assert convs_as_matmuls(model) == 0  # already swapped
    assert [id(p) for p in model.parameters()] == params  # an optimizer made before or after sees the same
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)

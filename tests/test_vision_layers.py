"""course_lib.vision against torch.nn.functional / torch.nn: convolution, BatchNorm, pooling.

Same inputs (and copied weights) on both sides. float32 values must agree to 1e-5 and
gradients (from a random upstream gradient, through autograd) to 1e-5 as well: im2col +
matmul sums the C_in/g * kh * kw products in another order than torch's convolution
kernels, so bit-equality is not expected, but 1e-5 is far below any real difference (a
wrong padding, stride or channel order changes outputs by O(1)).
"""

from __future__ import annotations

import ast
import inspect

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import vision as V

TOL = 1e-5


def close(actual, expected, atol=TOL, rtol=TOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def grads(fn, inputs, upstream):
    """d(sum(fn(*inputs) * upstream)) / d(inputs) for the tensors in ``inputs`` (None entries pass through)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    wrt = [t for t in leaves if t is not None]
    return torch.autograd.grad((out * upstream).sum(), wrt)


def same_values_and_grads(ours, theirs, inputs):
    """ours(*inputs) == theirs(*inputs) in value and in the gradient of every tensor input."""
    expected = theirs(*inputs)
    close(ours(*inputs), expected)
    upstream = torch.randn_like(expected)
    for g_ours, g_theirs in zip(grads(ours, inputs, upstream), grads(theirs, inputs, upstream)):
        close(g_ours, g_theirs)
    return expected


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# (B, C_in, H, W, C_out, kernel, stride, padding, dilation, groups)
CONV_GRID = [
    (2, 3, 8, 8, 4, 3, 1, 0, 1, 1),            # plain 3x3
    (2, 3, 9, 7, 5, 3, 1, 1, 1, 1),            # "same" padding, non-square image
    (1, 4, 11, 10, 6, 3, 2, 1, 1, 1),          # stride 2 with padding (ResNet's downsampling)
    (2, 3, 16, 16, 8, 7, 2, 3, 1, 1),          # ResNet's 7x7 stem
    (2, 4, 9, 9, 4, 1, 2, 0, 1, 1),            # 1x1 stride-2 shortcut
    (1, 2, 12, 12, 3, 3, 1, 2, 2, 1),          # dilation 2
    (1, 3, 13, 11, 2, (2, 3), (1, 2), (1, 0), (2, 1), 1),  # everything non-square
    (2, 4, 8, 8, 6, 3, 1, 1, 1, 2),            # 2 groups
    (2, 6, 8, 8, 6, 3, 1, 1, 1, 3),            # 3 groups
    (2, 5, 9, 9, 5, 3, 2, 1, 1, 5),            # depthwise (groups = C_in = C_out)
    (1, 4, 7, 7, 8, 3, 1, 1, 1, 4),            # depthwise with channel multiplier 2
    (2, 3, 16, 16, 8, 4, 4, 0, 1, 1),          # ViT's patchify: kernel = stride
    (1, 2, 5, 5, 3, 5, 1, 0, 1, 1),            # kernel as large as the image: one output pixel
]


def test_conv_output_size_formula_and_error():
    assert V.conv_output_size(224, 7, 2, 3) == 112  # ResNet stem
    assert V.conv_output_size(224, 16, 16) == 14  # ViT-B/16 patches per side
    assert V.conv_output_size(5, 3, 1, 0, 2) == 1
    with pytest.raises(ValueError, match=r"kernel of size 5 .*larger than the padded input of size 4 \(4 \+ 2"):
        V.conv_output_size(4, 5)
    with pytest.raises(ValueError, match=r"dilation 3 makes it span 7 pixels.*padded input of size 6"):
        V.conv_output_size(4, 3, padding=1, dilation=3)
    with pytest.raises(ValueError, match="stride must be an int >= 1"):
        V.conv_output_size(8, 3, stride=0)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 20), kernel=st.integers(1, 6), stride=st.integers(1, 4),
       padding=st.integers(0, 3), dilation=st.integers(1, 3))
def test_conv_output_size_is_the_shape_torch_produces(size, kernel, stride, padding, dilation):
    x, w = torch.zeros(1, 1, size, 1), torch.zeros(1, 1, kernel, 1)
    span = dilation * (kernel - 1) + 1
    if span > size + 2 * padding:
        with pytest.raises(ValueError, match="larger than the padded input"):
            V.conv_output_size(size, kernel, stride, padding, dilation)
        with pytest.raises(RuntimeError):  # torch refuses it too
            F.conv2d(x, w, stride=(stride, 1), padding=(padding, 0), dilation=(dilation, 1))
    else:
        out = F.conv2d(x, w, stride=(stride, 1), padding=(padding, 0), dilation=(dilation, 1))
        assert V.conv_output_size(size, kernel, stride, padding, dilation) == out.shape[2]


@pytest.mark.parametrize("case", CONV_GRID, ids=str)
def test_im2col_matches_F_unfold(case):
    B, C, H, W, _, k, s, p, d, _ = case
    x = torch.randn(B, C, H, W)
    same_values_and_grads(lambda t: V.im2col(t, k, s, p, d),
                          lambda t: F.unfold(t, k, dilation=d, padding=p, stride=s), [x])


def test_im2col_column_is_the_window_at_its_position():
    # read the layout off a tiny example: column l = i * W_out + j is the window at (i, j)
    x = torch.arange(2 * 4 * 5, dtype=torch.float32).view(1, 2, 4, 5)
    cols = V.im2col(x, 3, stride=1, padding=0)  # (1, 2*3*3, 2*3)
    assert cols.shape == (1, 18, 6)
    i, j = 1, 2
    close(cols[0, :, i * 3 + j], x[0, :, i:i + 3, j:j + 3].reshape(-1))


@pytest.mark.parametrize("case", CONV_GRID, ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d_matches_F_conv2d_values_and_gradients(case, with_bias):
    B, C_in, H, W, C_out, k, s, p, d, g = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(B, C_in, H, W)
    w = torch.randn(C_out, C_in // g, kh, kw) * 0.3
    b = torch.randn(C_out) if with_bias else None
    out = same_values_and_grads(lambda x, w, b: V.conv2d(x, w, b, s, p, d, g),
                                lambda x, w, b: F.conv2d(x, w, b, s, p, d, g), [x, w, b])
    assert out.shape[2] == V.conv_output_size(H, kh, *(v if isinstance(v, int) else v[0] for v in (s, p, d)))


def test_conv2d_float64_and_dtype_preserved():
    x, w, b = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64), None
    y = V.conv2d(x, w, b, padding=1)
    assert y.dtype == torch.float64
    close(y, F.conv2d(x, w, b, padding=1), atol=1e-12, rtol=1e-12)


def test_Conv2d_same_init_names_repr_and_output_as_nn_Conv2d():
    configs = [dict(in_channels=3, out_channels=8, kernel_size=3),
               dict(in_channels=4, out_channels=8, kernel_size=(3, 5), stride=2, padding=(1, 2), bias=False),
               dict(in_channels=6, out_channels=6, kernel_size=3, padding=2, dilation=2, groups=6)]
    for cfg in configs:
        torch.manual_seed(3)
        ours = V.Conv2d(**cfg)
        torch.manual_seed(3)
        ref = nn.Conv2d(**cfg)
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
        for (name, a), (_, r) in zip(ours.named_parameters(), ref.named_parameters()):
            assert torch.equal(a, r), name  # same seed, same draws: identical weights
        assert repr(ours) == repr(ref)
        x = torch.randn(2, cfg["in_channels"], 10, 11)
        close(ours(x), ref(x))
        ours.load_state_dict(ref.state_dict())  # checkpoints move both ways
        ref.load_state_dict(ours.state_dict())
    assert V.Conv2d(3, 4, 3, device="meta").weight.device.type == "meta"
    assert V.Conv2d(3, 4, 3, dtype=torch.float64).weight.dtype == torch.float64


# --------------------------------------------------------------------------------------
# BatchNorm2d

def test_batch_norm2d_training_matches_F_batch_norm_values_gradients_and_running_update():
    x = torch.randn(4, 3, 5, 6) * 2 + 0.5
    w, b = 1 + 0.2 * torch.randn(3), 0.1 * torch.randn(3)
    rm, rv = torch.randn(3), torch.rand(3) + 0.5
    rm_ref, rv_ref = rm.clone(), rv.clone()
    close(V.batch_norm2d(x, rm, rv, w, b, True, 0.1, 1e-5), F.batch_norm(x, rm_ref, rv_ref, w, b, True, 0.1, 1e-5))
    close(rm, rm_ref, atol=1e-6, rtol=1e-6)
    close(rv, rv_ref, atol=1e-6, rtol=1e-6)  # the unbiased variance went in, as torch does
    # gradients flow through the batch statistics (not only the affine part)
    same_values_and_grads(lambda x, w, b: V.batch_norm2d(x, None, None, w, b, True),
                          lambda x, w, b: F.batch_norm(x, None, None, w, b, True), [x, w, b])


def test_batch_norm2d_eval_uses_running_stats():
    x = torch.randn(2, 4, 3, 3)
    rm, rv, w, b = torch.randn(4), torch.rand(4) + 0.1, torch.randn(4), torch.randn(4)
    same_values_and_grads(lambda x, w, b: V.batch_norm2d(x, rm, rv, w, b, False, 0.1, 1e-3),
                          lambda x, w, b: F.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-3), [x, w, b])
    # eval output of one image does not depend on the rest of its batch
    close(V.batch_norm2d(x[:1], rm, rv, w, b), V.batch_norm2d(x, rm, rv, w, b)[:1])


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_BatchNorm2d_module_tracks_like_nn_BatchNorm2d_over_several_steps(momentum):
    ours, ref = V.BatchNorm2d(5, momentum=momentum), nn.BatchNorm2d(5, momentum=momentum)
    with torch.no_grad():
        ours.weight.copy_(1 + 0.3 * torch.randn(5))
        ours.bias.copy_(0.3 * torch.randn(5))
    ref.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(ref.state_dict()) == [
        "weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    # torch's repr gained a "bias=" field in recent versions; ours is the classic one
    assert repr(ours) == f"BatchNorm2d(5, eps=1e-05, momentum={momentum}, affine=True, track_running_stats=True)"
    ours.train(), ref.train()
    for step in range(4):
        x = torch.randn(3, 5, 4, 4) * (step + 1) + step  # statistics that move, so the update matters
        upstream = torch.randn(3, 5, 4, 4)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = ours(x1), ref(x2)
        close(y1, y2)
        (y1 * upstream).sum().backward()
        (y2 * upstream).sum().backward()
        close(x1.grad, x2.grad)
        for name in ("running_mean", "running_var"):
            close(getattr(ours, name), getattr(ref, name), atol=1e-6, rtol=1e-6)
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == step + 1
    close(ours.weight.grad, ref.weight.grad)
    close(ours.bias.grad, ref.bias.grad)
    ours.eval(), ref.eval()
    x = torch.randn(2, 5, 3, 3)
    close(ours(x), ref(x))
    before = ours.running_mean.clone()
    ours(x)
    assert torch.equal(ours.running_mean, before) and ours.num_batches_tracked.item() == 4  # eval changes nothing


def test_BatchNorm2d_without_running_stats_or_affine_matches_torch():
    for kwargs in (dict(track_running_stats=False), dict(affine=False)):
        ours, ref = V.BatchNorm2d(3, **kwargs), nn.BatchNorm2d(3, **kwargs)
        assert list(ours.state_dict()) == list(ref.state_dict())
        x = torch.randn(4, 3, 2, 2) * 3 + 1
        for mode in (True, False):
            ours.train(mode), ref.train(mode)
            close(ours(x), ref(x))


def test_BatchNorm2d_loads_a_checkpoint_without_num_batches_tracked():
    ref = nn.BatchNorm2d(4)
    with torch.no_grad():
        ref.running_mean.copy_(torch.randn(4))
    state = {k: v for k, v in ref.state_dict().items() if k != "num_batches_tracked"}
    ours = V.BatchNorm2d(4)
    ours.load_state_dict(state)  # strict: like nn.BatchNorm2d, the counter starts at 0
    assert torch.equal(ours.running_mean, ref.running_mean)
    assert ours.num_batches_tracked.item() == 0


def test_batch_norm2d_half_computes_in_float32():
    x = (torch.randn(2, 3, 4, 4) * 3 + 1).to(torch.bfloat16)
    y = V.batch_norm2d(x, None, None, training=True)
    assert y.dtype == torch.bfloat16
    close(y, F.batch_norm(x.float(), None, None, training=True).to(torch.bfloat16), atol=0, rtol=0)


@pytest.mark.parametrize("groups,bias", [(1, True), (1, False), (2, True), (4, False)])
def test_fold_batchnorm_equals_conv_then_bn_in_eval(groups, bias):
    conv = V.Conv2d(4, 8, 3, stride=2, padding=1, groups=groups, bias=bias)
    bn = V.BatchNorm2d(8)
    with torch.no_grad():  # trained-looking statistics, far from the defaults
        bn.running_mean.copy_(torch.randn(8))
        bn.running_var.copy_(torch.rand(8) * 3 + 0.1)
        bn.weight.copy_(torch.randn(8))
        bn.bias.copy_(torch.randn(8))
    bn.eval()
    conv_state = {k: v.clone() for k, v in conv.state_dict().items()}
    bn_state = {k: v.clone() for k, v in bn.state_dict().items()}
    folded = V.fold_batchnorm(conv, bn)
    assert isinstance(folded, V.Conv2d) and folded.bias is not None and not folded.training
    assert (folded.stride, folded.padding, folded.groups) == (conv.stride, conv.padding, conv.groups)
    x = torch.randn(3, 4, 9, 9)
    close(folded(x), bn(conv(x)))
    # ... and equal to torch's own conv + BN with the same weights
    ref_conv, ref_bn = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=groups, bias=bias), nn.BatchNorm2d(8).eval()
    ref_conv.load_state_dict(conv.state_dict())
    ref_bn.load_state_dict(bn.state_dict())
    close(folded(x), ref_bn(ref_conv(x)))
    # the originals are untouched
    for k, v in conv.state_dict().items():
        assert torch.equal(v, conv_state[k]), k
    for k, v in bn.state_dict().items():
        assert torch.equal(v, bn_state[k]), k


def test_fold_batchnorm_is_wrong_in_train_mode_and_errors_are_clear():
    # folding freezes the running statistics: in train mode BN uses the batch's, so they differ
    conv, bn = V.Conv2d(3, 4, 3), V.BatchNorm2d(4)
    folded = V.fold_batchnorm(conv, bn)
    x = torch.randn(4, 3, 8, 8) * 2 + 1
    assert not torch.allclose(folded(x), bn.train()(conv(x)), atol=1e-3)
    with pytest.raises(ValueError, match="conv has 4 output channels but the BatchNorm has 5"):
        V.fold_batchnorm(conv, V.BatchNorm2d(5))
    with pytest.raises(ValueError, match="no running statistics"):
        V.fold_batchnorm(conv, V.BatchNorm2d(4, track_running_stats=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine,with_bias", [(True, True), (True, False), (False, True)])
def test_fold_batchnorm_weights_on_tensors_equals_torch_conv_then_bn(dtype, affine, with_bias):
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=with_bias).to(dtype)
    bn = nn.BatchNorm2d(5, eps=1e-3, affine=affine).to(dtype)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(5))
        bn.running_var.copy_(torch.rand(5) * 3 + 0.05)
        if affine:
            bn.weight.copy_(torch.randn(5))
            bn.bias.copy_(torch.randn(5))
    bn.eval()
    before = [t.clone() for t in (conv.weight, bn.running_var)]
    w, b = V.fold_batchnorm_weights(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(),
                                    bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
    assert w.shape == conv.weight.shape and b.shape == (5,) and w.dtype == b.dtype == dtype
    x = torch.randn(2, 3, 7, 6, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    with torch.no_grad():
        close(F.conv2d(x, w, b, padding=1), bn(conv(x)), atol=tol, rtol=tol)
    assert torch.equal(before[0], conv.weight) and torch.equal(before[1], bn.running_var)  # inputs untouched


def test_fold_batchnorm_uses_the_standard_deviation_and_eps():
    # one channel, by hand: s = 2 / sqrt(3 + 1) = 1, t = 0.5 - 4 * 1 = -3.5
    w, b = V.fold_batchnorm_weights(torch.full((1, 1, 1, 1), 3.0), torch.tensor([1.0]), torch.tensor([2.0]),
                                    torch.tensor([0.5]), torch.tensor([4.0]), torch.tensor([3.0]), eps=1.0)
    assert w.item() == 3.0 and b.item() == (1.0 - 4.0) * 1.0 + 0.5
    with pytest.raises(ValueError, match="conv has 2 output channels but the BatchNorm has 3"):
        V.fold_batchnorm_weights(torch.ones(2, 1, 1, 1), None, None, None, torch.zeros(3), torch.ones(3))


# --------------------------------------------------------------------------------------
# Receptive field


def measured_receptive_field(layers, size=64):
    """(field, jump) read off autograd on a real stack along the height axis: the input rows that
    reach output pixel (i, 0), and how far that set moves from output row i to i + 1."""
    mods = []
    for i, (k, s, d) in enumerate(layers):
        if i % 2:  # alternate convolutions and average pools: any layer with these numbers has this field
            mods.append(lambda x, k=k, s=s, d=d: F.conv2d(x, torch.ones(1, 1, k, k), stride=s, dilation=d))
        elif d == 1:
            mods.append(lambda x, k=k, s=s: F.avg_pool2d(x, k, stride=s))
        else:  # avg_pool2d has no dilation: a dilated conv with positive weights
            mods.append(lambda x, k=k, s=s, d=d: F.conv2d(x, torch.rand(1, 1, k, k) + 0.5, stride=s, dilation=d))
    x = torch.rand(1, 1, size, size, dtype=torch.float64, requires_grad=True)

    def rows_reached(i):
        out = x
        for m in mods:
            out = m(out.float()).double()
        (g,) = torch.autograd.grad(out[0, 0, i, 0], x)
        rows = torch.nonzero(g[0, 0].abs().sum(1) > 0).flatten()
        return int(rows.min()), int(rows.max())

    first, last = rows_reached(0)
    nxt, _ = rows_reached(1)
    return last - first + 1, nxt - first


@pytest.mark.parametrize("layers", [
    [], [(3, 1, 1)], [(7, 2, 1), (3, 2, 1)], [(3, 1, 1)] * 3, [(3, 2, 1), (3, 1, 2), (2, 2, 1)],
    [(3, 1, 2), (3, 1, 4), (3, 1, 8)], [(4, 4, 1), (3, 1, 1)], [(1, 2, 1), (5, 1, 1), (3, 3, 2)],
], ids=str)
def test_receptive_field_is_what_gradients_of_a_real_stack_reach(layers):
    expected = V.receptive_field(layers)
    if layers:
        assert measured_receptive_field(layers) == expected
    else:
        assert expected == (1, 1)


def test_receptive_field_known_values_and_errors():
    assert V.receptive_field([(7, 2, 1), (3, 2, 1)]) == (11, 4)  # ResNet's stem
    assert V.receptive_field([(3, 1, 2 ** i) for i in range(4)]) == (31, 1)  # dilations 1, 2, 4, 8: 2^(n+1) - 1
    assert V.receptive_field([[16, 16, 1]]) == (16, 16)  # ViT's patch embedding
    with pytest.raises(ValueError, match="layer 1 is \\(3, 1\\)"):
        V.receptive_field([(3, 1, 1), (3, 1)])
    with pytest.raises(ValueError, match="ints >= 1"):
        V.receptive_field([(0, 1, 1)])
    with pytest.raises(TypeError, match="list of"):
        V.receptive_field(3)


# --------------------------------------------------------------------------------------
# Pooling

# (shape, kernel, stride, padding)
POOL_GRID = [
    ((2, 3, 8, 8), 2, None, 0),            # 2x2, stride = kernel
    ((2, 3, 9, 9), 3, 2, 1),               # ResNet's stem max-pool
    ((1, 2, 10, 7), 3, 1, 1),              # overlapping windows, non-square image
    ((1, 2, 11, 13), (2, 3), (1, 2), (1, 1)),  # everything non-square
    ((2, 1, 7, 7), 4, 3, 2),               # padding = kernel / 2
    ((1, 3, 5, 5), 5, 1, 0),               # one window: a global pool
]


@pytest.mark.parametrize("case", POOL_GRID, ids=str)
def test_max_pool2d_matches_F(case):
    shape, k, s, p = case
    x = torch.randn(*shape)
    same_values_and_grads(lambda t: V.max_pool2d(t, k, s, p), lambda t: F.max_pool2d(t, k, s, p), [x])
    # negative inputs at the border: the -inf padding must never win
    same_values_and_grads(lambda t: V.max_pool2d(t, k, s, p), lambda t: F.max_pool2d(t, k, s, p), [x.abs().neg() - 1])


@pytest.mark.parametrize("k,s,p", [(2, None, 0), (3, 2, 1), (3, 1, 1)])
def test_max_pool2d_ties_send_the_gradient_to_one_element_like_torch(k, s, p):
    # a flat image: every element of a window is the maximum. torch routes each window's
    # gradient to a single element (the first), not split across the ties as amax would
    x = torch.ones(1, 2, 7, 7)
    same_values_and_grads(lambda t: V.max_pool2d(t, k, s, p), lambda t: F.max_pool2d(t, k, s, p), [x])


def test_max_pool2d_dilation_matches_F():
    x = torch.randn(2, 3, 11, 12)
    same_values_and_grads(lambda t: V.max_pool2d(t, 3, 2, 1, dilation=2),
                          lambda t: F.max_pool2d(t, 3, 2, 1, dilation=2), [x])


@pytest.mark.parametrize("case", POOL_GRID, ids=str)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_matches_F(case, count_include_pad):
    shape, k, s, p = case
    x = torch.randn(*shape)
    same_values_and_grads(lambda t: V.avg_pool2d(t, k, s, p, count_include_pad),
                          lambda t: F.avg_pool2d(t, k, s, p, count_include_pad=count_include_pad), [x])


@pytest.mark.parametrize("hw,out", [
    ((8, 8), 1), ((8, 8), (2, 4)), ((7, 7), 3), ((10, 13), (4, 5)), ((5, 6), (7, 9)),  # upsampling too
    ((9, 11), (None, 4)), ((9, 11), (3, None)), ((1, 1), 1), ((6, 6), 6),
])
def test_adaptive_avg_pool2d_matches_F(hw, out):
    x = torch.randn(2, 3, *hw)
    same_values_and_grads(lambda t: V.adaptive_avg_pool2d(t, out), lambda t: F.adaptive_avg_pool2d(t, out), [x])


def test_adaptive_windows_are_torchs():
    # H=7 -> 3 outputs: rows [0, 3), [2, 5), [4, 7) — overlapping, by floor/ceil
    x = torch.arange(7.0).view(1, 1, 7, 1)
    close(V.adaptive_avg_pool2d(x, (3, 1)).flatten(), torch.tensor([1.0, 3.0, 5.0]))


def test_pool_modules_match_nn():
    x = torch.randn(2, 4, 12, 12)
    close(V.MaxPool2d(3, stride=2, padding=1)(x), nn.MaxPool2d(3, stride=2, padding=1)(x))
    close(V.MaxPool2d(2)(x), nn.MaxPool2d(2)(x))
    close(V.AvgPool2d(3, 2, 1)(x), nn.AvgPool2d(3, 2, 1)(x))
    close(V.AvgPool2d(3, 2, 1, count_include_pad=False)(x), nn.AvgPool2d(3, 2, 1, count_include_pad=False)(x))
    close(V.AdaptiveAvgPool2d((1, 1))(x), nn.AdaptiveAvgPool2d((1, 1))(x))
    close(V.AdaptiveAvgPool2d(5)(x), nn.AdaptiveAvgPool2d(5)(x))
    assert list(V.MaxPool2d(3).state_dict()) == []  # no parameters, nothing in a checkpoint


def test_pooling_preserves_dtype():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    for y in (V.max_pool2d(x, 2), V.avg_pool2d(x, 2), V.adaptive_avg_pool2d(x, 3)):
        assert y.dtype == torch.float64
    assert V.adaptive_avg_pool2d(x.to(torch.bfloat16), 3).dtype == torch.bfloat16


# --------------------------------------------------------------------------------------
# Clear errors

def test_wrong_channels_names_both_numbers():
    with pytest.raises(ValueError, match=r"input has 5 channels but the weight \(8, 3, 3, 3\) expects 3"):
        V.conv2d(torch.randn(1, 5, 8, 8), torch.randn(8, 3, 3, 3))
    with pytest.raises(ValueError, match=r"input has 5 channels .* expects 6 \(= weight.shape\[1\] 3 x groups 2\)"):
        V.conv2d(torch.randn(1, 5, 8, 8), torch.randn(8, 3, 3, 3), groups=2)
    with pytest.raises(ValueError, match="input has 5 channels but the weight"):
        V.Conv2d(3, 8, 3)(torch.randn(1, 5, 8, 8))
    with pytest.raises(ValueError, match="input has 3 channels but this layer was built for 4"):
        V.BatchNorm2d(4)(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"running_mean has shape \(4,\) but the input has 3 channels"):
        V.batch_norm2d(torch.randn(2, 3, 4, 4), torch.zeros(4), torch.ones(4))


def test_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match=r"conv2d: input of shape \(1, 2, 2, 9\).*"
                                         r"kernel of size 5 is larger than the padded input of size 4"):
        V.conv2d(torch.randn(1, 2, 2, 9), torch.randn(3, 2, 5, 5), padding=1)
    with pytest.raises(ValueError, match="larger than the padded input"):
        V.Conv2d(2, 3, 7)(torch.randn(1, 2, 6, 6))
    with pytest.raises(ValueError, match="max_pool2d.*larger than the padded input"):
        V.max_pool2d(torch.randn(1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match="im2col.*larger than the padded input"):
        V.im2col(torch.randn(1, 1, 3, 3), 2, dilation=3)


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match="groups=3 does not divide in_channels=4"):
        V.Conv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match="groups=4 does not divide out_channels=6"):
        V.Conv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="groups=2 does not divide the 5 output channels"):
        V.conv2d(torch.randn(1, 4, 5, 5), torch.randn(5, 2, 3, 3), groups=2)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        V.conv2d(torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3), groups=0)


def test_other_bad_input_is_named():
    with pytest.raises(ValueError, match=r"4-D .*got shape \(3, 8, 8\).*unsqueeze\(0\)"):
        V.conv2d(torch.randn(3, 8, 8), torch.randn(4, 3, 3, 3))
    with pytest.raises(TypeError, match="string paddings"):
        V.Conv2d(3, 4, 3, padding="same")
    with pytest.raises(ValueError, match=r"stride must be >= 1 .*\(0, 1\)"):
        V.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), stride=(0, 1))
    with pytest.raises(ValueError, match=r"bias has shape \(3,\), expected \(4,\)"):
        V.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(3))
    with pytest.raises(ValueError, match="input is torch.float32 on cpu but the weight is torch.float64"):
        V.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="at most half the kernel"):
        V.max_pool2d(torch.randn(1, 1, 8, 8), 2, padding=2)
    with pytest.raises(ValueError, match="at most half the kernel"):
        V.AvgPool2d(3, padding=2)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        V.BatchNorm2d(3).train()(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match="running_mean or running_var is None"):
        V.batch_norm2d(torch.randn(2, 3, 4, 4), None, None, training=False)


# --------------------------------------------------------------------------------------
# Teaching guarantee: built from primitives, not from the shortcuts it mirrors

SHORTCUTS = {"functional", "unfold", "fold", "pad", "conv2d", "convolution", "batch_norm", "max_pool2d",
             "avg_pool2d", "adaptive_avg_pool2d", "Conv2d", "BatchNorm2d", "MaxPool2d", "AvgPool2d",
             "AdaptiveAvgPool2d", "Unfold", "im2col"}
LIBRARY_ROOTS = {"torch", "nn", "F", "functional"}


def shortcuts_used(source: str) -> list[str]:
    """Dotted names in ``source``'s code that reach a torch shortcut (``F.unfold``, ``torch.conv2d`` ...).

    ``x.unfold(...)`` — the strided *view* of a tensor that im2col is built on — is
    allowed: its root is a tensor, not the library.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in SHORTCUTS:
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in LIBRARY_ROOTS:
                found.append(ast.unparse(node))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            found += [n for n in names if "functional" in n]
    return found


def test_vision_does_not_call_torch_shortcuts():
    assert shortcuts_used(inspect.getsource(V)) == []


@pytest.mark.parametrize("snippet", [
    "y = F.unfold(x, 3)", "y = torch.nn.functional.conv2d(x, w)", "y = torch.conv2d(x, w)",
    "y = F.batch_norm(x, m, v)", "y = F.max_pool2d(x, 2)", "y = F.pad(x, (1, 1))",
    "m = nn.Conv2d(3, 4, 3)", "y = F.adaptive_avg_pool2d(x, 1)", "import torch.nn.functional as F",
    "from torch.nn.functional import unfold", "y = nn.Unfold(3)(x)",
])
def test_the_shortcut_check_has_teeth(snippet):
    assert shortcuts_used(snippet), snippet
    assert shortcuts_used('"""like F.unfold"""\nw = x.unfold(2, 3, 1)\ny = conv2d(x, w)  # F.conv2d') == []

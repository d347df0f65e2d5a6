"""The channel gate's kernels (ops.channel_gate_*, kernels/channel_gate.cu): the NumPy reference's bits
on every backend in every dtype and layout (dgate's sum in its one written order, the same in both
layouts), the pooled gradient added as the pool's own backward adds it, the gradients against
central differences in float64, the SE block taking that path, the simulator's schedules, errors."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import gpuconv
from gpuconv import amp, kernels, layout, nn, ops
from gpuconv.ops import channel_gate as CG
from gpuconv.precision import bfloat16, unit_roundoff

DTYPES = [np.float64, np.float32, bfloat16, np.float16]
# 1x1 maps; C not a multiple of 8 (37: a partial 32-channel group channels_last) with 81 pixels (a
# partial round of the 32 running sums); 165 planes (21 blocks of 8 NCHW); 63 pixels, 9 channels
SHAPES = [(3, 40, 1, 1), (2, 37, 9, 9), (5, 33, 6, 6), (2, 9, 7, 9)]


def bits(a):
    """The values' bytes in NCHW order (whatever the layout), with the dtype."""
    return np.ascontiguousarray(np.asarray(a)).tobytes(), np.asarray(a).dtype


def arrays(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x, dy, add = ((rng.standard_normal(shape) * 3).astype(dtype) for _ in range(3))
    gate = rng.uniform(0, 1, shape[:2] + (1, 1)).astype(dtype)
    pooled = rng.standard_normal(gate.shape).astype(dtype)
    dy[0, 0] = -0.0  # a plane of -0.0 products: dgate +0.0 on every path
    return x, dy, add, gate, pooled


def gate_sums_loop(p):
    """dgate's written order, one (n, c) at a time: running sum l adds pixels l, l + 32, ... onto
    +0.0; then sums l and l + w added for w = 16, 8, 4, 2, 1."""
    n, c, h, w = p.shape
    out = np.empty((n, c, 1, 1), p.dtype)
    for i in range(n):
        for j in range(c):
            flat = p[i, j].reshape(-1)
            lanes = [p.dtype.type(0)] * 32
            for k, v in enumerate(flat):
                lanes[k % 32] = lanes[k % 32] + v
            width = 16
            while width:
                lanes = [lanes[k] + lanes[k + width] for k in range(width)]
                width //= 2
            out[i, j, 0, 0] = lanes[0]
    return out


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [(1, 2, 1, 1), (2, 3, 5, 7), (1, 2, 8, 4), (2, 2, 11, 3), (2, 3, 16, 16),
                                   (1, 2, 17, 19)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_references_gate_sum_is_its_written_order(dtype, shape, channels_last):
    """1, 35, 32 and 33 pixels (a last round of one term), 256 and 323 (8 and 10 whole rounds, which
    NumPy reduces along their axis): the reference's vectorized sum is the order written out term
    by term, in either layout, and within H * W roundings of the float64 sum."""
    rng = np.random.default_rng(1)
    p = (rng.standard_normal(shape) * 10).astype(dtype)
    p[0, 0] = -0.0  # a plane of -0.0 products sums to +0.0 (onto +0.0), as the kernel's
    got = CG._gate_sums(layout.to_channels_last(p) if channels_last else p)
    assert bits(got) == bits(gate_sums_loop(p)) and not np.signbit(got[0, 0, 0, 0])
    exact = p.astype(np.float64).sum(axis=(2, 3), keepdims=True)
    bound = shape[2] * shape[3] * unit_roundoff(dtype) * np.abs(p.astype(np.float64)).sum(axis=(2, 3), keepdims=True)
    assert np.all(np.abs(got - exact) <= bound)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_kernels_give_the_references_bits(backend, dtype, shape, channels_last):
    """y, dgate and dx (no add, a full-size add, a pooled gradient) on the backend: the host
    reference's bits, in x's (dy's) layout; dgate the same bits in both layouts."""
    x, dy, add, gate, pooled = arrays(shape, dtype, seed=2)
    put = (lambda a: gpuconv.to_channels_last(backend.asarray(a))) if channels_last else backend.asarray
    y, cache = ops.channel_gate_forward(put(x), backend.asarray(gate))
    dgate = ops.channel_gate_backward_gate(put(dy), cache)
    dxs = [ops.channel_gate_backward_data(put(dy), cache),
           ops.channel_gate_backward_data(put(dy), cache, add=put(add)),
           ops.channel_gate_backward_data(put(dy), cache, pooled=backend.asarray(pooled))]
    ry, rc = ops.channel_gate_forward(x, gate)  # (host arrays, NCHW: the NumPy reference)
    want = [ops.channel_gate_backward_data(dy, rc), ops.channel_gate_backward_data(dy, rc, add=add),
            ops.channel_gate_backward_data(dy, rc, pooled=pooled)]
    assert bits(backend.asnumpy(y)) == bits(ry)
    assert bits(backend.asnumpy(dgate)) == bits(ops.channel_gate_backward_gate(dy, rc))
    assert dgate.shape == gate.shape
    for got, ref in zip(dxs, want):
        assert bits(backend.asnumpy(got)) == bits(ref)
    assert all(layout.is_channels_last(a) == (channels_last and shape[2:] != (1, 1)) for a in [y] + dxs)
    backend.assert_kernels_ran("channel_gate_forward", "channel_gate_backward_gate", "channel_gate_backward_data")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_mixed_layouts_give_the_same_bits(backend, dtype):
    """dy NCHW beside a channels_last x (and the other way), an add in the other layout than dy:
    the values of one layout, dx in dy's."""
    x, dy, add, gate, _ = arrays((2, 5, 4, 3), dtype, seed=3)
    ry, rc = ops.channel_gate_forward(x, gate)
    want_dgate, want_dx = ops.channel_gate_backward_gate(dy, rc), ops.channel_gate_backward_data(dy, rc, add=add)
    for x_cl in (False, True):
        xb = gpuconv.to_channels_last(backend.asarray(x)) if x_cl else backend.asarray(x)
        dyb = backend.asarray(dy) if x_cl else gpuconv.to_channels_last(backend.asarray(dy))
        addb = backend.asarray(add) if not x_cl else gpuconv.to_channels_last(backend.asarray(add))
        _, cache = ops.channel_gate_forward(xb, backend.asarray(gate))
        assert bits(backend.asnumpy(ops.channel_gate_backward_gate(dyb, cache))) == bits(want_dgate)
        dx = ops.channel_gate_backward_data(dyb, cache, add=addb)
        assert bits(backend.asnumpy(dx)) == bits(want_dx) and layout.is_channels_last(dx) == (not x_cl)
    backend.assert_kernels_ran("channel_gate_backward_gate", "channel_gate_backward_data")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_pooled_adds_the_bits_of_the_pools_own_backward(backend, dtype, channels_last):
    """``pooled=g`` gives ``add=avg_pool2d_backward(g)``'s bits (the global pool of x), signed zeros
    included: a -0.0 gradient spreads as +0.0 (the pool adds onto zeros), so where dy * gate is
    -0.0 the sum is +0.0; and 1/(H * W) rounded to the compute dtype (1/9, 1/81: not exact)."""
    for shape in ((2, 3, 3, 3), (2, 37, 9, 9), (1, 4, 1, 1)):
        x, dy, _, gate, pooled = arrays(shape, dtype, seed=4)
        dy[:, :, 0, 0] = -0.0  # dy * gate = -0.0 at the first pixel of every plane
        pooled[0, :2] = -0.0
        pooled[1 % shape[0], 2:3] = 1e-30 if dtype in (np.float32, np.float64) else 0.0
        put = (lambda a: gpuconv.to_channels_last(backend.asarray(a))) if channels_last else backend.asarray
        xb = put(x)
        _, cache = ops.channel_gate_forward(xb, backend.asarray(gate))
        _, pool_cache = ops.adaptive_avg_pool2d_forward(xb, 1)
        add = ops.adaptive_avg_pool2d_backward(backend.asarray(pooled), pool_cache)
        want = ops.channel_gate_backward_data(put(dy), cache, add=add)
        got = ops.channel_gate_backward_data(put(dy), cache, pooled=backend.asarray(pooled))
        assert bits(backend.asnumpy(got)) == bits(backend.asnumpy(want))
        assert np.signbit(np.asarray(backend.asnumpy(got), np.float64)[0, :2, 0, 0]).tolist() == [False, False]


class _AnotherPool(nn.AdaptiveAvgPool2d):
    """A subclass: the SE block then calls its backward and adds the full-size result."""


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [np.float32, bfloat16], ids=lambda d: np.dtype(d).name)
def test_the_se_block_adds_the_pools_backward_in_the_data_gradients_pass(backend, dtype, channels_last):
    """SqueezeExcitation's backward hands the pool's output gradient to the gate's data gradient
    (no avg_pool2d_backward launch, no full-size array) and gets the bits of the pool's own backward
    added (a block whose pool is another class takes that path)."""
    rng = np.random.default_rng(5)
    x, dy = (rng.standard_normal((2, 12, 5, 5)).astype(dtype) for _ in range(2))
    se, other = (nn.SqueezeExcitation(12, 4, nn.SiLU, seed=7).to(backend.device) for _ in range(2))
    other.avgpool = _AnotherPool(1)
    put = (lambda a: gpuconv.to_channels_last(backend.asarray(a))) if channels_last else backend.asarray

    def step(block):  # (bf16: under amp, the block's convolutions on bf16 copies of the weights)
        with contextlib.ExitStack() as stack:
            if dtype != np.float32:
                stack.enter_context(amp.autocast(block, "bf16"))
            return block(put(x)), block.backward(put(dy))

    with kernels.launch_log() as log:
        y, dx = step(se)
    _, want = step(other)
    assert bits(backend.asnumpy(dx)) == bits(backend.asnumpy(want)) and dx.dtype == dtype
    assert layout.is_channels_last(dx) == layout.is_channels_last(y) == channels_last
    for (name, p), (_, q) in zip(se.named_parameters(), other.named_parameters()):
        assert bits(backend.asnumpy(p.grad)) == bits(backend.asnumpy(q.grad)), name
    assert all(m._cache is None for m in se.modules())
    assert not any(n.startswith("avg_pool2d_backward") for n in log.names), log.names
    backend.assert_kernels_ran("channel_gate_backward_data", "avg_pool2d_forward")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_the_simulators_schedules_give_the_same_bits(dtype, channels_last):
    """Threads and blocks in reversed order (a missing barrier before the channels_last tree, or a
    sum that depends on which warp runs first, would change the bits)."""
    x, dy, _, gate, pooled = arrays((3, 37, 7, 5), dtype, seed=6)
    if channels_last:
        x, dy = layout.to_channels_last(x), layout.to_channels_last(dy)
    outs = []
    for order in ("forward", "reverse"):
        with gpuconv.default_device("sim"), kernels.sim_schedule(order):
            y, cache = ops.channel_gate_forward(x, gate)
            outs.append([bits(a) for a in (y, ops.channel_gate_backward_gate(dy, cache),
                                           ops.channel_gate_backward_data(dy, cache, pooled=pooled))])
    _, rc = ops.channel_gate_forward(x, gate)
    assert outs[0] == outs[1]
    assert outs[0][1] == bits(ops.channel_gate_backward_gate(dy, rc))


def test_errors(backend):
    x, dy, add, gate, pooled = (backend.asarray(a) for a in arrays((2, 3, 4, 4), np.float32, seed=7))
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\) and gate \(N, C, 1, 1\).*gate \(2, 3, 4, 4\)"):
        ops.channel_gate_forward(x, x)
    with pytest.raises(TypeError, match=r"gate has dtype float64 but x has dtype float32"):
        ops.channel_gate_forward(x, gate.astype(np.float64))
    _, cache = ops.channel_gate_forward(x, gate)
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(2, 3, 4, 4\), got \(2, 3, 4, 2\)"):
        ops.channel_gate_backward_gate(dy[..., :2], cache)
    with pytest.raises(TypeError, match=r"dy has dtype bfloat16 but the forward's output had dtype float32"):
        ops.channel_gate_backward_data(dy.astype(bfloat16), cache)
    with pytest.raises(ValueError, match=r"add must have x's shape \(2, 3, 4, 4\), got \(2, 3, 1, 1\)"):
        ops.channel_gate_backward_data(dy, cache, add=pooled)
    with pytest.raises(ValueError, match=r"pooled must be \(N, C, 1, 1\) \(2, 3, 1, 1\).*got \(2, 3, 4, 4\)"):
        ops.channel_gate_backward_data(dy, cache, pooled=add)
    with pytest.raises(TypeError, match=r"pooled has dtype float16 but dy has dtype float32"):
        ops.channel_gate_backward_data(dy, cache, pooled=pooled.astype(np.float16))
    with pytest.raises(ValueError, match=r"pass add \(x's shape\) or pooled \(N, C, 1, 1\), not both"):
        ops.channel_gate_backward_data(dy, cache, add=add, pooled=pooled)
    with pytest.raises(TypeError, match=r"cache must be the ChannelGateCache that channel_gate_forward returned"):
        ops.channel_gate_backward_gate(dy, (x, gate))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_the_elementwise_grids_loop_over_images_and_elements(monkeypatch, channels_last):
    """One block along each image and 2 images at a time (as grid y's limit would make it past
    65535 images): each thread walks several elements of an image and the blocks several images;
    the reference's bits."""
    from gpuconv.ops import _launch_channel_gate as launcher
    monkeypatch.setattr(launcher, "MAX_BLOCKS_X", 1)
    monkeypatch.setattr(kernels, "GRID_Y_MAX", 2)
    x, dy, add, gate, _ = arrays((5, 3, 11, 13), np.float32, seed=8)
    if channels_last:
        x, dy, add = (layout.to_channels_last(a) for a in (x, dy, add))
    with gpuconv.default_device("sim"), kernels.launch_log() as log:
        y, cache = ops.channel_gate_forward(x, gate)
        dx = ops.channel_gate_backward_data(dy, cache, add=add)
    assert [(rec.name, rec.grid) for rec in log] == [("channel_gate_forward", (1, 2, 1)),
                                                    ("channel_gate_backward_data", (1, 2, 1))]
    ry, rc = ops.channel_gate_forward(x, gate)
    assert bits(y) == bits(ry) and bits(dx) == bits(ops.channel_gate_backward_data(dy, rc, add=add))


def test_pooled_on_maps_without_pixels_gives_an_empty_dx(backend):
    """H = 0: no pixel takes a share of the pooled gradient, on the reference as in the kernel (whose
    launch has nothing to do): an empty dx, not a division of 1 by the H * W = 0 pixels."""
    x = np.ones((2, 3, 0, 4), np.float32)
    gate = np.full((2, 3, 1, 1), 0.5, np.float32)
    _, cache = ops.channel_gate_forward(backend.asarray(x), backend.asarray(gate))
    dx = ops.channel_gate_backward_data(backend.asarray(x), cache, pooled=backend.asarray(gate))
    assert dx.shape == x.shape and dx.dtype == x.dtype


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_gradients_float64(backend, channels_last):
    """dx and dgate against central differences in float64, x perturbed where it lies (its NHWC
    memory channels_last); and pooled=: dx of <gate * x, dy> + <avgpool(x), pooled>, the SE
    block's gradient through its global pool."""
    from gpuconv.gradcheck import numerical_gradient, numerical_gradient_array, relative_error
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal((2, 3, 2, 3)), rng.standard_normal((2, 3, 2, 3))
    gate, pooled = rng.uniform(0.2, 1.0, (2, 3, 1, 1)), rng.standard_normal((2, 3, 1, 1))
    x, dy, gate, pooled = map(backend.asarray, (x, dy, gate, pooled))
    if channels_last:
        x, dy = layout.to_channels_last(x), layout.to_channels_last(dy)
    _, cache = ops.channel_gate_forward(x, gate)
    dx = ops.channel_gate_backward_data(dy, cache)
    dgate = ops.channel_gate_backward_gate(dy, cache)
    with_pool = ops.channel_gate_backward_data(dy, cache, pooled=pooled)
    assert layout.is_channels_last(dx) == channels_last
    backend.assert_kernels_ran("channel_gate_forward", "channel_gate_backward_gate", "channel_gate_backward_data")
    num_dx = numerical_gradient_array(lambda a: ops.channel_gate_forward(a, gate)[0], x, dy)
    num_dgate = numerical_gradient_array(lambda g: ops.channel_gate_forward(x, g)[0], gate, dy)
    num_pool = numerical_gradient(lambda a: (ops.channel_gate_forward(a, gate)[0] * dy).sum()
                                  + (ops.adaptive_avg_pool2d_forward(a, 1)[0] * pooled).sum(), x)
    for name, got, want in (("dx", dx, num_dx), ("dgate", dgate, num_dgate), ("dx with pooled", with_pool, num_pool)):
        err = relative_error(backend.asnumpy(got), backend.asnumpy(want))
        assert err < 1e-6, f"{name}: relative error {err:.2e}"

"""channels_last (gpuconv.layout): arrays stay logically NCHW while their memory is NHWC; every op
and layer keeps the layout it is given and computes the same values in either layout, on every
backend; parameter gradients keep the parameters' own (contiguous) layout."""
from __future__ import annotations

import sys

import ml_dtypes
import numpy as np
import pytest

import gpuconv
from gpuconv import kernels, layout, nn
from gpuconv.ops import _dispatch
from gpuconv.ops import (avg_pool2d_backward, avg_pool2d_forward, batchnorm2d_backward, batchnorm2d_forward,
                         conv2d_backward, conv2d_forward, dropout_backward, dropout_forward, max_pool2d_backward,
                         max_pool2d_forward, relu_backward, relu_forward)

BF16 = np.dtype(ml_dtypes.bfloat16)


def test_to_channels_last_is_a_layout_not_a_new_shape():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    y = gpuconv.to_channels_last(x)
    assert y.shape == x.shape and np.array_equal(y, x) and y[1, 2, 3, 4] == x[1, 2, 3, 4]
    assert gpuconv.is_channels_last(y) and not gpuconv.is_channels_last(x)
    assert y.strides == (3 * 4 * 5 * 4, 4, 5 * 3 * 4, 3 * 4)  # channels adjacent in memory
    assert gpuconv.to_channels_last(y) is y
    z = gpuconv.to_contiguous(y)
    assert z.flags.c_contiguous and np.array_equal(z, x)
    assert layout.nhwc(y).base is not None and layout.nhwc(y).flags.c_contiguous  # a view, no copy
    # one channel, or 1x1 images: both layouts are the same memory, NCHW is what it is called
    assert not gpuconv.is_channels_last(gpuconv.to_channels_last(np.zeros((2, 1, 3, 3), np.float32)))
    assert not gpuconv.is_channels_last(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\) array; got shape \(3, 4, 5\)"):
        gpuconv.to_channels_last(np.zeros((3, 4, 5), np.float32))
    with pytest.raises(TypeError, match=r"got a list: wrap it first, e.g. np.asarray"):
        gpuconv.to_channels_last([[[[1.0]]]])


def test_layout_checks_read_the_flags_of_the_transposes_they_skip():
    """is_channels_last / nhwc_memory / memory_order decide from shape and strides; over views of
    every kind (axis orders, stepped slices, size-1 and empty axes) they say what the flags of the
    transposed views say."""
    rng = np.random.default_rng(5)
    seen = 0
    for _ in range(600):
        shape = tuple(int(v) for v in rng.choice([0, 1, 2, 3], 4, p=[0.04, 0.3, 0.33, 0.33]))
        x = np.zeros(shape, np.float32).transpose(tuple(rng.permutation(4)))  # any memory order
        if rng.random() < 0.3:
            x = x[tuple(slice(None, None, int(rng.integers(1, 3))) for _ in range(4))]
        want_nhwc = bool(x.transpose(layout.NHWC).flags.c_contiguous)
        want_cl = want_nhwc and not bool(x.flags.c_contiguous)
        assert layout.nhwc_memory(x) == want_nhwc, (x.shape, x.strides)
        assert layout.is_channels_last(x) == want_cl, (x.shape, x.strides)
        m = layout.memory_order(x)
        assert (m.flags.c_contiguous and m.base is not None) if want_cl else m is x
        nm = layout.nhwc_memory_of(x)  # the ops' results made channels_last: a copy only where needed
        assert nm is x if want_nhwc else (nm.transpose(layout.NHWC).flags.c_contiguous and np.array_equal(nm, x))
        assert kernels.address(x) == x.ctypes.data
        seen += want_cl
    assert seen > 10  # channels_last arrays were drawn, not only the others
    for other in (None, 3, 2.5, np.float32(1), np.zeros((2, 3), np.float32)):  # no 4-D array: no layout
        assert not layout.is_channels_last(other) and not layout.nhwc_memory(other)
        assert layout.memory_order(other) is other and layout.nhwc_memory_of(other) is other



def test_numpy_arrays_are_answered_by_their_flags(monkeypatch):
    """A NumPy array's layout is read off NumPy's own flags (C-contiguous: NCHW; else whether its
    NHWC view is): is_channels_last, memory_order and the ops' _keep_layout skip the
    shape-and-strides memo for it (test_layout_checks_read_the_flags_of_the_transposes_they_skip
    checks the answers)."""
    x = np.zeros((2, 3, 4, 5), np.float32)
    cl = layout.to_channels_last(x)
    asked = []
    real = layout._orders_by_strides
    monkeypatch.setattr(layout, "_orders_by_strides", lambda *a: asked.append(a) or real(*a))
    assert not layout.is_channels_last(x) and layout.memory_order(x) is x
    assert _dispatch._keep_layout((x,), x) is x
    assert layout.is_channels_last(cl) and layout.memory_order(cl).flags.c_contiguous
    assert _dispatch._keep_layout((cl,), cl) is cl
    assert asked == []


def test_an_op_result_in_nhwc_memory_is_kept_without_asking_the_arguments_layout(monkeypatch):
    """_keep_layout answers a result whose activation is in NHWC memory already (or is not 4-D)
    without reading its arguments' layout (nothing would change whatever it is), on NumPy's flags or,
    for another array, the shape-and-strides memo; an NCHW result of a channels_last call is still
    converted."""
    class Gpu(np.ndarray):  # an array NumPy's flags do not answer for (as CuPy's)
        pass

    x = np.zeros((2, 3, 4, 5), np.float32)
    cl = layout.to_channels_last(x)
    monkeypatch.setattr(layout, "is_channels_last", lambda a: pytest.fail("the arguments' layout was asked"))
    for ref in (x, cl, cl.view(Gpu)):
        assert _dispatch._keep_layout((ref,), cl) is cl
        assert _dispatch._keep_layout((ref,), cl.view(Gpu)).strides == cl.strides
        out = (cl, None, np.zeros(3))
        assert _dispatch._keep_layout((ref, 1), out) is out
        assert _dispatch._keep_layout((ref,), (None, x)) == (None, x)
    monkeypatch.undo()
    got = _dispatch._keep_layout((cl,), (x.copy(), 1))
    assert layout.is_channels_last(got[0]) and got[1] == 1 and np.array_equal(got[0], x)


def test_run_channels_last_is_every_array_nhwc_and_one_channels_last():
    """run_channels_last over arrays of every memory order (and non-4-D ones) answers what the
    flags of their NHWC transposes say: every one of them NHWC memory, at least one channels_last."""
    rng = np.random.default_rng(6)
    arrays = [np.zeros(tuple(int(v) for v in rng.choice([1, 2, 3], 4)), np.float32).transpose(tuple(rng.permutation(4)))
              for _ in range(40)] + [np.zeros((2, 3), np.float32), np.zeros((0, 2, 2, 2), np.float32)]
    for _ in range(400):
        group = [arrays[i] for i in rng.integers(0, len(arrays), int(rng.integers(1, 4)))]
        nhwc = [a.ndim == 4 and bool(a.transpose(layout.NHWC).flags.c_contiguous) for a in group]
        cl = [n and not a.flags.c_contiguous for n, a in zip(nhwc, group)]
        assert layout.run_channels_last(*group) == (all(nhwc) and any(cl)), [(a.shape, a.strides) for a in group]

def _network_step(x, w, bias, gamma, beta):
    """conv -> batchnorm -> ReLU -> max pool -> average pool -> dropout, and back."""
    y, c1 = conv2d_forward(x, w, bias, 1, 1)
    b, c2 = batchnorm2d_forward(y, gamma, beta, None, None)
    r, c3 = relu_forward(b)
    m, c4 = max_pool2d_forward(r, 2)
    a, c5 = avg_pool2d_forward(m, 1)
    d, c6 = dropout_forward(a, 0.25, key=11)
    g = gpuconv.to_channels_last(d * 0 + 1) if gpuconv.is_channels_last(x) else d * 0 + 1
    g = avg_pool2d_backward(dropout_backward(g, c6), c5)
    g = relu_backward(max_pool2d_backward(g, c4), c3)
    g, dgamma, _ = batchnorm2d_backward(g, c2)
    dx, dw, db = conv2d_backward(g, c1)
    return [y, b, r, m, a, d, dx], [dw, db, dgamma]


@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["f32", "bf16"])
def test_every_op_keeps_channels_last_and_its_values(backend, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 6, 6)).astype(dtype)
    w = rng.standard_normal((16, 8, 3, 3)).astype(dtype)
    bias = rng.standard_normal(16).astype(dtype)
    gamma, beta = np.ones(16, np.float32), np.zeros(16, np.float32)
    params = [backend.asarray(a) for a in (w, bias, gamma, beta)]
    with gpuconv.default_device(backend.device):
        acts_nchw, grads_nchw = _network_step(backend.asarray(x), *params)
        acts, grads = _network_step(gpuconv.to_channels_last(backend.asarray(x)), *params)
    for i, (a, b) in enumerate(zip(acts, acts_nchw)):
        assert gpuconv.is_channels_last(a), f"activation {i} lost the layout"
        assert not gpuconv.is_channels_last(b) and b.flags.c_contiguous, f"activation {i} changed an NCHW layout"
        got, want = (backend.asnumpy(v).astype(np.float64) for v in (a, b))
        if i == 0:  # the convolution reduces in the same order in either layout: the same bits
            assert np.array_equal(got, want), "the convolution differs between layouts"
        else:  # batch norm's statistics sum in memory order: within a rounding of the dtype
            rtol = 1e-5 if dtype == np.float32 else 2.0**-7
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol, err_msg=f"activation {i}")
    for g, h in zip(grads, grads_nchw):  # through batch norm's sums: within a rounding of the dtype too
        assert not gpuconv.is_channels_last(g) and g.flags.c_contiguous
        tol = 1e-5 if dtype == np.float32 else 2.0**-7
        np.testing.assert_allclose(backend.asnumpy(g).astype(np.float64), backend.asnumpy(h).astype(np.float64),
                                   rtol=tol, atol=tol)


def test_conv2d_layouts_of_every_mix_of_x_w_and_dy(backend):
    """Over every mix of layouts of x, w and dy, on every backend, the NumPy reference's rule: y is
    channels_last when x is; dx when x or dy is (x's gradient keeps x's layout, as pooling's
    does); dw is contiguous OIHW; the values are those of the all-NCHW call."""
    rng = np.random.default_rng(3)
    x0, w0 = rng.standard_normal((2, 4, 5, 5)).astype(np.float32), rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    dy0 = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)

    def put(a, cl):
        a = backend.asarray(a)
        return gpuconv.to_channels_last(a) if cl else a

    y0, cache0 = conv2d_forward(x0, w0, None, 1, 1)
    want = [y0] + list(conv2d_backward(dy0, cache0)[:2])
    for x_cl, w_cl, dy_cl in np.ndindex(2, 2, 2):
        y, cache = conv2d_forward(put(x0, x_cl), put(w0, w_cl), None, 1, 1)
        dx, dw, _ = conv2d_backward(put(dy0, dy_cl), cache)
        mix = f"x {'NHWC' if x_cl else 'NCHW'}, w {'NHWC' if w_cl else 'NCHW'}, dy {'NHWC' if dy_cl else 'NCHW'}"
        assert gpuconv.is_channels_last(y) == bool(x_cl), mix
        assert gpuconv.is_channels_last(dx) == bool(x_cl or dy_cl), mix
        assert dw.flags.c_contiguous, mix
        for got, ref in zip((y, dx, dw), want):
            np.testing.assert_allclose(backend.asnumpy(got), ref, rtol=1e-5, atol=1e-5, err_msg=mix)


def test_layers_keep_the_layout(backend):
    rng = np.random.default_rng(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    with gpuconv.default_device(backend.device):
        net.to(backend.device)
        ref = backend.asnumpy(net(backend.asarray(x)))
        conv_out = net[0](gpuconv.to_channels_last(backend.asarray(x)))
        got = backend.asnumpy(net(gpuconv.to_channels_last(backend.asarray(x))))
    assert gpuconv.is_channels_last(conv_out)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)  # Flatten reads logical (C, H, W) order


def test_a_channels_last_training_step_converts_nothing(monkeypatch, launches):
    """fast_net's bf16 training step on the simulator, fed channels_last: every activation and
    gradient stays NHWC from the first layer to the last and back (no layout conversion anywhere;
    the 1x1 head, whose two layouts are the same memory, needs none), on the tensor-core
    convolutions."""
    from gpuconv import amp, models
    from gpuconv.optim import SGD
    conversions = []
    real_last, real_nhwc = layout.to_channels_last, layout.nhwc

    def to_last(x):
        if not layout.is_channels_last(x):
            conversions.append(("to_channels_last", tuple(x.shape)))
        return real_last(x)

    def nhwc(x):
        if not layout.is_channels_last(x):
            conversions.append(("nhwc", tuple(x.shape)))
        return real_nhwc(x)

    rng = np.random.default_rng(2)
    x = gpuconv.to_channels_last(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    y = rng.integers(0, 10, 2)
    with gpuconv.default_device("sim"):
        model = models.fast_net(width=8, seed=1)
        opt = SGD(model.parameters(), lr=0.01)
        monkeypatch.setattr(layout, "to_channels_last", to_last)
        monkeypatch.setattr(layout, "nhwc", nhwc)
        loss, _ = amp.training_step(model, opt, x, y, "bf16")
    assert np.isfinite(float(loss))
    assert conversions == [], conversions
    names = launches.names
    assert {"conv2d_forward_tc", "conv2d_backward_data_tc", "conv2d_backward_weight_tc"} <= set(names)
    assert not any(n.startswith("conv2d_forward_v") for n in names)


def test_nhwc_switches_the_gpu_only_to_copy(fake_second_gpu, monkeypatch):
    """The NHWC view of a channels_last array allocates nothing: it is answered without making the
    array's GPU current (the tensor-core convolutions ask for it four times per layer a step); an
    NCHW array's transposing copy (kernels/layout.cu) is made on its own GPU. CuPy is faked
    (conftest.FakeSecondGpu)."""
    gpu, entered = fake_second_gpu, []
    real = layout.array_device_context
    monkeypatch.setattr(layout, "array_device_context", lambda arrays: entered.append(len(arrays)) or real(arrays))
    x = gpu.on(np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5))
    last = layout.to_channels_last(x)
    del entered[:], gpu.calls[:]
    view = layout.nhwc(last)
    assert entered == [] and gpu.calls == [] and np.shares_memory(view, last)
    copy = layout.nhwc(x)
    assert entered == [1] and gpu.calls == [("empty", 1), ("layout_transpose", 1)] and gpu.current == [0]
    for a in (view, copy):
        assert a.flags.c_contiguous and np.array_equal(np.asarray(a), np.asarray(x).transpose(0, 2, 3, 1))


def _cupy_ufunc_results(gpu, monkeypatch):
    """The fake GPU arrays' ufuncs as CuPy's: a result made by the ufunc is C-contiguous whatever
    the operands' layout (cupy/_core/_kernel.pyx allocates it C-ordered: CuPy's user guide,
    "Contiguity / Strides"), a given ``out`` is written in place; a Python scalar operand stays one
    (weakly typed, as in CuPy's ufuncs: ``bf16_array * 0`` stays bfloat16)."""
    def array_ufunc(self, ufunc, method, *inputs, out=None, **kwargs):
        args = [np.asarray(a) if isinstance(a, np.ndarray) else a for a in inputs]
        if out is not None:
            getattr(ufunc, method)(*args, out=tuple(np.asarray(o) for o in out), **kwargs)
            return out[0] if len(out) == 1 else out
        if method == "__call__":
            kwargs["order"] = "C"
        return np.asarray(getattr(ufunc, method)(*args, **kwargs)).view(gpu.OnGpu)
    monkeypatch.setattr(gpu.OnGpu, "__array_ufunc__", array_ufunc, raising=False)


def test_add_gives_numpys_layout_where_cupys_ufuncs_give_c_order(fake_second_gpu, monkeypatch):
    """layout.add is ``a + b`` in NumPy's layout: on NumPy exactly ``a + b``, on the (faked) GPU,
    whose ufuncs give C-contiguous results, a sum of channels_last operands (a channel slice of one
    included) is channels_last as NumPy's is, a sum of an NCHW and a channels_last one NCHW."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    nchw, nhwc = base[:, :3].copy(), gpuconv.to_channels_last(base[:, :3])
    nhwc_part = gpuconv.to_channels_last(base)[:, 1:4]  # a channel slice of a channels_last array
    pairs = [(nchw, nchw), (nhwc, nhwc), (nchw, nhwc), (nhwc, nchw), (nhwc_part, nhwc), (nhwc_part, nhwc_part)]
    for a, b in pairs:  # NumPy: a + b itself
        got, want = layout.add(a, b), a + b
        assert got.strides == want.strides and np.array_equal(got, want)
    gpu = fake_second_gpu
    _cupy_ufunc_results(gpu, monkeypatch)
    assert not layout.is_channels_last(gpu.on(nhwc) + gpu.on(nhwc))  # (the fake's ufuncs are CuPy's)
    for a, b in pairs:
        got = layout.add(gpu.on(a), gpu.on(b))
        assert isinstance(got, gpu.OnGpu) and layout.is_channels_last(got) == layout.is_channels_last(a + b)
        np.testing.assert_array_equal(np.asarray(got), a + b)
    assert gpu.current == [0] and ("add", 1) in gpu.calls  # added on the arrays' GPU


@pytest.mark.parametrize("block", ["residual", "dual_path", "concat"])
def test_branch_sums_stay_channels_last_with_cupys_ufuncs(block, fake_second_gpu, monkeypatch):
    """Residual's sum and the input gradients Residual and DualPath add up keep a channels_last
    input's layout on a GPU as on NumPy: with CuPy's ufuncs a bare ``a + b`` gave NCHW there (a
    bf16 airbench96 or ResNet-9 step turning NCHW at every residual block, the layers after it
    converting back). DualPath's join adds its shared channels into the channels_last output in
    place (a C-contiguous sum copied in was a transposing pass more). Concat adds an Identity
    branch's slice of dy where it lies, not copied dense first (a DenseNet layer copied all of its
    input's channels so), its sum of views channels_last too."""
    gpu = fake_second_gpu
    _cupy_ufunc_results(gpu, monkeypatch)
    made, ufunc = [], gpu.OnGpu.__array_ufunc__

    def array_ufunc(self, uf, method, *inputs, out=None, **kwargs):
        if out is None:  # a result of CuPy's allocation: C-contiguous (then copied into place if 4-D)
            made.append((uf.__name__, tuple(np.shape(inputs[0]))))
        return ufunc(self, uf, method, *inputs, out=out, **kwargs)

    monkeypatch.setattr(gpu.OnGpu, "__array_ufunc__", array_ufunc)
    copies, real_copy = [], layout.nhwc_memory_of
    monkeypatch.setattr(layout, "nhwc_memory_of", lambda a: (
        copies.append(tuple(a.shape)) if a.ndim == 4 and not layout.nhwc_memory(a) else None, real_copy(a))[1])
    rng = np.random.default_rng(1)
    x_host = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    x = gpuconv.to_channels_last(gpu.on(x_host))
    if block == "residual":
        layer, dy_shape = nn.Residual(nn.Identity()), (2, 4, 3, 3)
    elif block == "dual_path":  # the shortcut's gradient a view of dy, the residual path's a copy
        layer, dy_shape = nn.DualPath(nn.Identity(), None, split=3), (2, 5, 3, 3)
    else:  # both gradients views of dy
        layer, dy_shape = nn.Concat(nn.Identity(), nn.Identity()), (2, 8, 3, 3)
    dy_host = rng.standard_normal(dy_shape).astype(np.float32)
    dy = gpuconv.to_channels_last(gpu.on(dy_host))
    copies.clear()  # (the inputs' conversions)
    y = layer(x)
    assert layout.is_channels_last(y)
    dx = layer.backward(dy)
    assert layout.is_channels_last(dx), f"{block}: dx came back NCHW"
    # every sum written straight into its channels_last array: none made C-contiguous and then copied
    # in (the dual path's join added its first channels into a temporary)
    assert made == [], made
    assert copies == [], copies
    if block == "residual":
        np.testing.assert_array_equal(np.asarray(y), 2 * x_host)
        np.testing.assert_array_equal(np.asarray(dx), 2 * dy_host)
    elif block == "dual_path":
        np.testing.assert_array_equal(np.asarray(dx), np.concatenate([2 * dy_host[:, :3], dy_host[:, 3:4] +
                                                                      dy_host[:, 4:]], 1))
    else:
        np.testing.assert_array_equal(np.asarray(y), np.concatenate([x_host, x_host], 1))
        np.testing.assert_array_equal(np.asarray(dx), dy_host[:, :4] + dy_host[:, 4:])


def _fake_gpu_kernels_on_the_simulator(gpu, monkeypatch):
    """The fake GPU's arrays (CuPy's ufunc semantics, :func:`_cupy_ufunc_results`) with every
    kernel the 'cuda' path launches run on the simulator instead (conftest.FakeSecondGpu reroutes
    the launches), planned as for an H100 with tensor cores: the GPU's Python path (its branches on
    'cuda', CuPy's array semantics) on a CPU."""
    from gpuconv.kernels import _capability, _launching
    from gpuconv.ops import _launch_batchnorm, _launch_pool2d
    _cupy_ufunc_results(gpu, monkeypatch)
    monkeypatch.setattr(gpu.OnGpu, "data", property(  # what the launchers read of a CuPy array's memory
        lambda a: type("MemoryPointer", (), {"ptr": a.__array_interface__["data"][0], "device_id": 1})()),
        raising=False)
    real_resident = _launching.resident_blocks

    def resident_blocks(op_file, name, dtype, threads, target, device=None, tf32=False, shared_mem=0):
        return real_resident(op_file, name, dtype, threads, "sim")

    for module in (_launching, kernels):
        monkeypatch.setattr(module, "resident_blocks", resident_blocks)
    monkeypatch.setattr(_launching, "_device_sms", lambda device: _launching.NOMINAL_SMS)
    monkeypatch.setattr(_capability, "_compute_capability_of", lambda device: 90)
    monkeypatch.setattr(_capability, "_every_gpu_has_tensor_cores", lambda min_cc: True)
    monkeypatch.setattr(_capability, "_arch_specific_build", lambda device: False)
    # memos keyed by the fake GPU's device go with the test
    monkeypatch.setattr(_launching, "_tickets", {})
    monkeypatch.setattr(_launch_pool2d, "_RUNS", {})
    monkeypatch.setattr(_launch_batchnorm, "_PLANS", {})


def _count_conversions(monkeypatch):
    """The list of the step's transposing copies (``to_channels_last``, ``nhwc``, ``nhwc_memory_of`` of a
    4-D array whose strides do not follow NHWC order: not a channel slice of a channels_last array,
    which is copied dense, not transposed), wherever an op module imported them."""
    copies, depth = [], [0]

    def counted(fn):
        def f(x, *args, **kwargs):
            if not depth[0] and getattr(x, "ndim", None) == 4 and not layout._strides_allow(x, layout.NHWC):
                copies.append((fn.__name__, tuple(x.shape)))
            depth[0] += 1  # (to_channels_last calls nhwc_memory_of: one copy)
            try:
                return fn(x, *args, **kwargs)
            finally:
                depth[0] -= 1
        return f

    wrappers = {id(fn): (fn, counted(fn)) for fn in (layout.to_channels_last, layout.nhwc, layout.nhwc_memory_of)}
    for name, module in list(sys.modules.items()):
        if name == "gpuconv" or name.startswith("gpuconv."):
            for attr, value in list(vars(module).items()):
                if id(value) in wrappers and wrappers[id(value)][0] is value:
                    monkeypatch.setattr(module, attr, wrappers[id(value)][1])
    return copies


def _onto(gpu, net):
    """``net`` with its parameters and batch norm's running statistics on the fake GPU."""
    for p in net.parameters():
        p.data = gpu.on(p.data)
    for layer in net.modules():
        for name, value in list(vars(layer).items()):
            if type(value) is np.ndarray:
                setattr(layer, name, gpu.on(value))
    return net


@pytest.mark.parametrize("model", ["fast_net", "airbench96"])
def test_a_channels_last_step_converts_nothing_with_cupys_ufuncs(model, fake_second_gpu, monkeypatch):
    """As test_a_channels_last_training_step_converts_nothing, on the GPU's path: the arrays CuPy's
    (their ufuncs make C-contiguous results), the kernels on the simulator. Every activation and
    gradient stays NHWC through the residual blocks (their sums came out NCHW on a GPU, and the
    convolutions after each converted them back: 19 copies in fast_net's step, 27 in airbench96's)."""
    from gpuconv import amp, models
    from gpuconv.optim import SGD
    gpu = fake_second_gpu
    _fake_gpu_kernels_on_the_simulator(gpu, monkeypatch)
    rng = np.random.default_rng(2)
    x = gpu.on(gpuconv.to_channels_last(rng.standard_normal((2, 3, 32, 32)).astype(np.float32)))
    y = gpu.on(rng.integers(0, 10, 2))
    net = _onto(gpu, models.fast_net(width=8, seed=1) if model == "fast_net" else
                models.airbench96(widths=(4, 8, 8), seed=1))
    opt = SGD(net.parameters(), lr=0.01)
    conversions = _count_conversions(monkeypatch)
    with kernels.autotuning(False):
        loss, _ = amp.training_step(net, opt, x, y, "bf16")
    assert isinstance(loss, gpu.OnGpu) and np.isfinite(float(np.asarray(loss)))
    assert conversions == [], conversions


def test_channel_gate_and_a_low_precision_transposed_bias_copy_nothing_with_cupys_ufuncs(fake_second_gpu,
                                                                                       monkeypatch):
    """channel_gate's products and a bf16 transposed convolution's bias sum are made in the input's
    layout on the GPU's path (CuPy's ufuncs, kernels on the simulator), not C-contiguous and then
    copied to channels_last: no transposing copy, and the values NumPy's."""
    from gpuconv import ops
    gpu = fake_second_gpu
    rng = np.random.default_rng(3)
    host = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in
            (("x", (2, 4, 3, 3)), ("gate", (2, 4, 1, 1)), ("dy", (2, 4, 3, 3)), ("add", (2, 4, 3, 3)),
             ("w", (4, 8, 2, 2)), ("b", (8,)))}
    cases = []
    for dtype in (np.dtype(np.float32), BF16):
        arrays = {k: gpu.on(gpuconv.to_channels_last(v) if v.ndim == 4 and v.shape[2] > 1 else v).astype(dtype)
                  for k, v in host.items()}
        cases.append((dtype, arrays))
    _fake_gpu_kernels_on_the_simulator(gpu, monkeypatch)
    copies, real = [], layout.nhwc_memory_of

    def nhwc_memory_of(y):
        if getattr(y, "ndim", None) == 4 and not layout.nhwc_memory(y):
            copies.append(tuple(y.shape))
        return real(y)

    monkeypatch.setattr(layout, "nhwc_memory_of", nhwc_memory_of)
    for dtype, a in cases:
        y, cache = ops.channel_gate_forward(a["x"], a["gate"])
        dx = ops.channel_gate_backward_data(a["dy"], cache, add=a["add"])
        assert layout.is_channels_last(y) and layout.is_channels_last(dx) and y.dtype == dx.dtype == dtype
        xs, gs, dys, adds = (np.asarray(a[k]).astype(np.float32) for k in ("x", "gate", "dy", "add"))
        np.testing.assert_array_equal(np.asarray(y), (xs * gs).astype(dtype))
        np.testing.assert_array_equal(np.asarray(dx), (dys * gs + adds).astype(dtype))
    _, a = cases[1]  # bf16: the bias added in float32 to the rounded data gradient, rounded once
    with kernels.autotuning(False):
        y, _ = ops.conv_transpose2d_forward(a["x"], a["w"], a["b"], stride=2)
    assert layout.is_channels_last(y) and y.dtype == BF16 and y.shape == (2, 8, 6, 6)
    assert copies == [], copies
    want, _ = ops.conv_transpose2d_forward(*(np.asarray(a[k]).view(np.ndarray) for k in ("x", "w", "b")), stride=2)
    np.testing.assert_array_equal(np.asarray(y).astype(np.float32), want.astype(np.float32))  # (NumPy's reference)


def test_batch_norm_passes_its_float32_vectors_on_the_gpu_without_converting_them(fake_second_gpu, monkeypatch):
    """Batch norm's launchers take parameters and statistics that are contiguous float32 already as
    they are, on the GPU's path (CuPy's module, kernels on the simulator): no ascontiguousarray call
    for them; a strided running statistic is still made contiguous, and updated in place through
    its copy, to the same values."""
    gpu = fake_second_gpu
    _fake_gpu_kernels_on_the_simulator(gpu, monkeypatch)
    rng = np.random.default_rng(4)
    x = gpu.on(gpuconv.to_channels_last(rng.standard_normal((2, 8, 4, 4)).astype(ml_dtypes.bfloat16)))
    dy = gpu.on(gpuconv.to_channels_last(rng.standard_normal((2, 8, 4, 4)).astype(ml_dtypes.bfloat16)))
    gamma, beta = gpu.on(rng.standard_normal(8).astype(np.float32)), gpu.on(rng.standard_normal(8).astype(np.float32))
    results = []
    for strided in (False, True):
        rm = gpu.on(np.zeros(16 if strided else 8, np.float32))[::2 if strided else 1]
        rv = gpu.on(np.ones(8, np.float32))
        gpu.calls.clear()
        y, cache = batchnorm2d_forward(x, gamma, beta, rm, rv, training=True)
        dx, dgamma, dbeta = batchnorm2d_backward(dy, cache)
        converted = [name for name, _ in gpu.calls if name == "ascontiguousarray"]
        assert converted == (["ascontiguousarray"] if strided else []), converted
        results.append([np.asarray(a).copy() for a in (y, dx, dgamma, dbeta, rm, rv)])
    assert not np.all(results[0][4] == 0)  # (the running mean moved)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- kernels/layout.cu
LAYOUT_DTYPES = [np.dtype(np.float32), np.dtype(np.float64), BF16, np.dtype(np.float16)]


def _with_nans(a):
    """``a`` (float) with a few NaNs whose payloads a copy as bits keeps and one as values may not."""
    flat = a.reshape(-1)
    bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize]
    exponent = {2: 0x7C00 if a.dtype == np.float16 else 0x7F80, 4: 0x7F800000, 8: 0x7FF0000000000000}[a.itemsize]
    flat.view(bits)[::7] = np.asarray(exponent | 0x5, bits)  # a signalling NaN's pattern, payload 5
    return a


@pytest.mark.parametrize("dtype", LAYOUT_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape, padded", [((3, 5, 7, 9), 8), ((2, 40, 3, 11), 40), ((2, 1, 33, 2), 1),
                                           ((3, 70, 1, 1), 72), ((1, 33, 6, 6), 36)],
                         ids=["c5p8", "c40", "c1", "1x1p72", "c33p36"])
def test_the_layout_kernel_moves_each_value_as_bits_both_ways(dtype, shape, padded, monkeypatch):
    """layout_transpose on the simulator, NCHW -> NHWC (channels padded with zeros) and NHWC ->
    NCHW: every value where NumPy's transpose puts it, bit for bit (NaN payloads included), across
    partial 32 x 32 tiles and, with the grid's image rows cut to 2, blocks striding over the images."""
    from gpuconv.ops import _launch_layout as LL
    monkeypatch.setattr(LL, "_IMAGES_MAX", 2)
    rng = np.random.default_rng(3)
    x = _with_nans(rng.standard_normal(shape).astype(dtype))
    bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[x.itemsize]
    with kernels.launch_log() as log:
        nhwc = LL.nchw_to_nhwc(x, padded, target="sim")
        back = LL.nhwc_to_nchw(np.ascontiguousarray(x.transpose(layout.NHWC)).transpose(layout.NCHW), target="sim")
    assert [r.grid[1] for r in log] == [min(shape[0], 2)] * 2
    n, c, h, w = shape
    want = np.zeros((n, h, w, padded), dtype)
    want[..., :c] = x.transpose(layout.NHWC)
    assert nhwc.shape == want.shape and nhwc.flags.c_contiguous
    np.testing.assert_array_equal(nhwc.view(bits), want.view(bits))
    assert back.shape == shape and back.flags.c_contiguous
    np.testing.assert_array_equal(back.view(bits), x.view(bits))


def test_the_layout_kernel_rounds_to_tf32_as_it_writes_where_asked():
    """With tf32 (float32 only) each value is written rounded as round_tf32 rounds it, the special
    values included, the padded channels zero; a bfloat16 array asked for it is refused (None)."""
    from gpuconv.ops import _launch_layout as LL
    from gpuconv.precision import round_tf32
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 5, 7)).astype(np.float32)
    x.view(np.uint32)[...] |= 0x0FFF  # low bits the rounding drops, half of them ties or above
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 3.4028235e38, 1e-45, -1.17549435e-38], np.float32)
    x.reshape(-1)[:special.size] = special
    got = LL.nchw_to_nhwc(x, 8, target="sim", tf32=True)
    want = np.zeros((2, 5, 7, 8), np.float32)
    want[..., :6] = round_tf32(x).transpose(layout.NHWC)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert LL.nchw_to_nhwc(x.astype(BF16), 8, target="sim", tf32=True) is None


def test_layout_copies_of_gpu_arrays_run_the_layout_kernel(fake_second_gpu):
    """On a GPU, to_channels_last, nhwc and to_contiguous of a dense array copy it by
    kernels/layout.cu (one launch on the array's GPU, the values NumPy's transpose gives); an array
    not dense in the order the kernel reads (a slice) or of a dtype it has no build for (int8)
    keeps CuPy's transposing copy. CuPy is faked (conftest.FakeSecondGpu)."""
    gpu = fake_second_gpu
    rng = np.random.default_rng(5)
    host = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)
    x = gpu.on(host)
    last = layout.to_channels_last(x)
    assert layout.is_channels_last(last) and np.array_equal(np.asarray(last), host)
    view = layout.nhwc(x)
    assert view.flags.c_contiguous and np.array_equal(np.asarray(view), host.transpose(layout.NHWC))
    back = layout.to_contiguous(last)
    assert back.flags.c_contiguous and np.array_equal(np.asarray(back), host)
    assert [c for c in gpu.calls if c[0] == "layout_transpose"] == [("layout_transpose", 1)] * 3
    del gpu.calls[:]
    small = gpu.on(host.astype(np.int8))
    for a, a_last in ((x[:, :, 1:], last[:, :, 1:]), (small, layout.to_channels_last(small))):  # CuPy's copies
        got = layout.to_channels_last(a)
        assert layout.is_channels_last(got) and np.array_equal(np.asarray(got), np.asarray(a))
        got = layout.to_contiguous(a_last)
        assert got.flags.c_contiguous and np.array_equal(np.asarray(got), np.asarray(a))
    assert not any(c[0] == "layout_transpose" for c in gpu.calls), gpu.calls


def test_layout_copies_of_a_numpy_subclass_stay_numpys(tmp_path):
    """A NumPy subclass (a memmap of a saved .npy: np.load(..., mmap_mode='r')) is NumPy's array:
    to_channels_last, nhwc and to_contiguous copy it with NumPy (no GPU kernel asked for), and a
    TF32 tensor-core convolution on the simulator converts it as NumPy's."""
    rng = np.random.default_rng(6)
    host = rng.standard_normal((2, 8, 6, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", host)
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert type(x) is np.memmap
    last = gpuconv.to_channels_last(x)
    assert layout.is_channels_last(last) and np.array_equal(last, host)
    assert np.array_equal(layout.nhwc(x), host.transpose(layout.NHWC))
    back = gpuconv.to_contiguous(last)
    assert back.flags.c_contiguous and np.array_equal(back, host)
    from gpuconv.ops import _launch_conv2d as LC
    w = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
    families = {f: "tc" for f in ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")}
    with kernels.use_variant("tf32", **families):
        got, _ = LC.conv2d_forward_kernel(x, w, None, (1, 1), (1, 1), True, target="sim")
        want, _ = LC.conv2d_forward_kernel(host, w, None, (1, 1), (1, 1), True, target="sim")
    np.testing.assert_array_equal(np.asarray(got), want)


def test_to_contiguous_copies_an_array_of_any_rank_on_its_gpu(fake_second_gpu):
    """to_contiguous of a CuPy array that is not 4-D (a transposed matrix) copies it on the array's
    own GPU, not the current one (CuPy allocates on the current device). CuPy is faked."""
    gpu = fake_second_gpu
    a = gpu.on(np.arange(12, dtype=np.float32).reshape(3, 4)).T
    got = layout.to_contiguous(a)
    assert got.flags.c_contiguous and np.array_equal(np.asarray(got), np.arange(12).reshape(3, 4).T)
    assert gpu.calls == [("ascontiguousarray", 1)] and gpu.current == [0]


def test_the_layout_kernel_refuses_sizes_its_int_tile_coordinates_would_overflow():
    """A partial tile's threads compute their row and column (int) up to 31 past the matrix's last:
    a side within 31 of 2^31 - 1 is refused (None: CuPy's copy), one of 2^31 - 1 - 32 taken."""
    from gpuconv.ops import _launch_layout as LL
    limit = 2**31 - 1
    src = np.empty((0, 1, 1, 1), np.float32)
    for side in (limit, limit - 5):
        assert LL.transpose(src, 0, 1, side, 1, (0, 1, 1, 1), target="sim") is None  # cols: S
        assert LL.transpose(src, 0, 1, 1, side, (0, 1, 1, 1), target="sim") is None  # padded: Rp
    assert LL.transpose(src, 0, 1, limit - LL.TILE, 1, (0, 1, 1, 1), target="sim") is not None

"""gpuconv.compat.cs231n: submodules with the starter names, editions, NumPy dtype promotion, the
assignment's fast-layer caches, NumPy's global generator for dropout, and use_device() (on 'sim':
NumPy in and out, kernels run, parameter copies reused only when provably unchanged)."""
from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest

import gpuconv.compat.cs231n as C
from gpuconv import kernels

LAYERS_2019 = {"affine_forward", "affine_backward", "relu_forward", "relu_backward", "batchnorm_forward",
               "batchnorm_backward", "batchnorm_backward_alt", "layernorm_forward", "layernorm_backward",
               "dropout_forward", "dropout_backward", "conv_forward_naive", "conv_backward_naive",
               "max_pool_forward_naive", "max_pool_backward_naive", "spatial_batchnorm_forward",
               "spatial_batchnorm_backward", "spatial_groupnorm_forward", "spatial_groupnorm_backward",
               "svm_loss", "softmax_loss"}
FAST = {"conv_forward_im2col", "conv_forward_strides", "conv_backward_strides", "conv_backward_im2col",
        "conv_forward_fast", "conv_backward_fast", "max_pool_forward_fast", "max_pool_backward_fast",
        "max_pool_forward_reshape", "max_pool_backward_reshape", "max_pool_forward_im2col", "max_pool_backward_im2col"}
UTILS = {"affine_relu_forward", "affine_relu_backward", "conv_relu_forward", "conv_relu_backward",
         "conv_bn_relu_forward", "conv_bn_relu_backward", "conv_relu_pool_forward", "conv_relu_pool_backward"}
OPTIM = {"sgd", "sgd_momentum", "rmsprop", "adam"}


@pytest.mark.parametrize("package, layers", [
    ("gpuconv.compat.cs231n", LAYERS_2019),
    ("gpuconv.compat.cs231n.e2017", LAYERS_2019 - {"layernorm_forward", "layernorm_backward",
                                                   "spatial_groupnorm_forward", "spatial_groupnorm_backward"}),
    ("gpuconv.compat.cs231n.e2016", LAYERS_2019 - {"layernorm_forward", "layernorm_backward",
                                                   "spatial_groupnorm_forward", "spatial_groupnorm_backward"}),
    ("gpuconv.compat.cs231n.e2025", LAYERS_2019)])
def test_submodules_export_exactly_the_starter_names(package, layers):
    utils = UTILS - {"conv_bn_relu_forward", "conv_bn_relu_backward"} if package.endswith("e2016") else UTILS
    for name, want in (("layers", layers), ("fast_layers", FAST), ("layer_utils", utils), ("optim", OPTIM)):
        namespace = {}
        exec(f"from {package}.{name} import *", namespace)
        assert set(namespace) - {"__builtins__"} == want, name
    assert (layers | FAST | utils | OPTIM) <= set(importlib.import_module(package).__all__)


def test_editions():
    assert all(C.edition(year) is C for year in range(2018, 2027) if year != 2025) and C.edition(2017) is C.e2017
    with pytest.raises(ValueError, match=r"edition 2014 .*\[2015, 2016, 2017, 2018, .*2026\]"):
        C.edition(2014)
    # 2015's dropout p keeps a unit (its convnets pass p = 1.0 for none): the latest semantics
    assert C.edition(2015) is C and (C.edition(2015).dropout_forward(np.ones((3, 4)), {"mode": "train", "p": 1.0})[0]
                                     == 1).all()
    E = C.edition(2017)
    assert list(inspect.signature(E.adam).parameters) == ["x", "dx", "config"]
    assert list(inspect.signature(E.optim.rmsprop).parameters) == ["x", "dx", "config"]
    assert list(inspect.signature(C.optim.adam).parameters) == ["w", "dw", "config"]
    w, dw = np.linspace(-1, 1, 6), np.linspace(1, -1, 6)
    assert E.adam(w, dw)[1]["t"] == 2 and C.adam(w, dw)[1]["t"] == 1
    x = np.ones((400, 500))
    kept_2017 = (E.dropout_forward(x, {"mode": "train", "p": 0.3})[0] != 0).mean()
    kept_latest = (C.dropout_forward(x, {"mode": "train", "p": 0.3})[0] != 0).mean()
    assert abs(kept_2017 - 0.7) < 0.01 and abs(kept_latest - 0.3) < 0.01
    with pytest.raises(ValueError, match="DROP probability in the 2016-2017 editions"):
        E.dropout_forward(x, {"mode": "train", "p": 1.0})
    assert E.Solver.UPDATE_RULES["adam"] is E.adam and C.Solver.UPDATE_RULES["adam"] is C.adam
    # 2016: 2017's API (x, dx; p drops), but Adam's t from 0
    S = C.edition(2016)
    assert S is C.e2016 and S.dropout_forward is E.dropout_forward and S.rmsprop is E.rmsprop
    assert list(inspect.signature(S.adam).parameters) == ["x", "dx", "config"] and S.adam(w, dw)[1]["t"] == 1
    assert S.Solver.UPDATE_RULES["adam"] is S.adam and S.optim.adam is S.adam
    assert set(S.__all__) == set(E.__all__) and "layernorm_forward" not in S.__all__
    # 2025: the layers of 2018 on, the update rules of the optim.py assignment 2 ships written
    F = C.edition(2025)
    assert F is C.e2025 and F.dropout_forward is C.dropout_forward and set(F.__all__) == set(C.__all__)
    assert F.Solver.UPDATE_RULES["adam"] is F.adam and F.optim.adam is F.adam and F.sgd is C.sgd


def test_the_2025_update_rules_work_in_place_as_that_editions_optim_py():
    """2025's assignment 2 ships optim.py written: its rules update w (and the velocity and the
    RMSProp cache) in place, keeping their dtype, and return w itself; its Adam folds the bias
    corrections into the step size, so epsilon sits beside sqrt(v), not sqrt(v_hat)."""
    F = C.edition(2025)
    w0 = np.linspace(-0.4, 0.6, 20).reshape(4, 5).astype(np.float32)
    dw = np.linspace(-0.6, 0.4, 20).reshape(4, 5) * 1e-4       # float64, small: epsilon matters
    for name in ("sgd_momentum", "rmsprop", "adam"):
        w, config = w0.copy(), {"velocity": np.zeros((4, 5), np.float32)} if name == "sgd_momentum" else {}
        velocity = config.get("velocity")
        next_w, config = getattr(F, name)(w, dw, config)
        assert next_w is w and w.dtype == np.float32, name
        assert not np.array_equal(w, w0), name
        if name == "sgd_momentum":
            assert config["velocity"] is velocity and velocity.dtype == np.float32
        if name == "rmsprop":
            assert config["cache"].dtype == np.float32
    # Adam, step 1: lr * sqrt(1 - b2) / (1 - b1) * m / (sqrt(v) + eps), with m = (1 - b1) dw, v = (1 - b2) dw^2
    w = w0.astype(np.float64)
    next_w, config = F.adam(w.copy(), dw, {"learning_rate": 1e-3})
    m, v = 0.1 * dw, 0.001 * dw * dw
    want = w - 1e-3 * np.sqrt(0.001) / 0.1 * (m / (np.sqrt(v) + 1e-8))
    np.testing.assert_allclose(next_w, want, rtol=1e-15, atol=1e-18)
    other = C.adam(w.copy(), dw, {"learning_rate": 1e-3})[0]     # epsilon beside sqrt(v_hat)
    assert np.abs(other - next_w).max() > 1e-9 and config["t"] == 1


def test_dropout_draws_from_numpys_global_generator():
    x = np.random.default_rng(0).standard_normal((6, 7)).astype(np.float32)
    np.random.seed(5)
    out, (_, mask) = C.dropout_forward(x, {"mode": "train", "p": 0.6})
    np.random.seed(5)
    want_mask = (np.random.rand(6, 7) < 0.6) / 0.6
    np.testing.assert_array_equal(mask, want_mask)
    assert out.dtype == np.float32 and np.array_equal(out, (x * want_mask).astype(np.float32))
    out2, _ = C.dropout_forward(x, {"mode": "train", "p": 0.6, "seed": 5})     # the seed is np.random.seed
    np.testing.assert_array_equal(out2, out)


def test_dtypes_follow_numpy():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    cp = {"stride": 1, "pad": 1}
    w32, b32 = w.astype(np.float32), b.astype(np.float32)
    ref, _ = C.conv_forward_fast(x, w32.astype(np.float64), b32.astype(np.float64), cp)
    out, cache = C.conv_forward_fast(x, w32, b32, cp)          # float32 weights, float64 data: float64
    assert out.dtype == np.float64 and np.array_equal(out, ref)
    dx, dw, db = C.conv_backward_fast(np.ones_like(out), cache)
    assert dx.dtype == dw.dtype == db.dtype == np.float64
    xi = np.arange(24).reshape(2, 12) - 10                                        # integer inputs
    out, _ = C.affine_forward(xi, np.ones((12, 3)), np.array([1, 2, 3]))
    np.testing.assert_array_equal(out, xi.reshape(2, 12) @ np.ones((12, 3)) + [1, 2, 3])
    relu, _ = C.relu_forward(xi)
    assert relu.dtype == xi.dtype and np.array_equal(relu, np.maximum(xi, 0))
    gamma_int = np.array([1, 2, 3])
    out, _ = C.batchnorm_forward(rng.standard_normal((5, 3)).astype(np.float32), gamma_int, np.zeros(3),
                                 {"mode": "train"})
    assert out.dtype == np.float64
    # One low-precision dtype throughout stays that dtype (gpuconv's precision rule applies).
    import ml_dtypes
    bf = ml_dtypes.bfloat16
    out, cache = C.conv_forward_fast(x.astype(bf), w.astype(bf), b.astype(bf), cp)
    assert out.dtype == bf and all(g.dtype == bf for g in C.conv_backward_fast(np.ones_like(out), cache))
    # A float64 dout on a float32 forward: the backward is computed in float64, as NumPy would.
    x32, w32 = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    _, cache = C.affine_forward(x32, w32, np.zeros(2, np.float32))
    dout = rng.standard_normal((3, 2))
    dx, dw, _ = C.affine_backward(dout, cache)
    assert dx.dtype == np.float64 and np.allclose(dx, dout @ w32.T.astype(np.float64), rtol=1e-15)



def test_big_endian_arrays_compute_as_numpys():
    """Arrays in the other byte order ('>f8', as read from a big-endian file) compute as NumPy's
    arithmetic does, whether every argument has that order or only some: the ops take native
    arrays, so the call casts them, as it casts any other dtype."""
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    cp = {"stride": 1, "pad": 1}
    big = [a.astype(">f8") for a in (x, w, b)]
    ref, ref_cache = C.conv_forward_naive(x, w, b, cp)
    out, cache = C.conv_forward_naive(*big, cp)
    assert out.dtype == np.float64 and np.array_equal(out, ref)
    dout = rng.standard_normal(ref.shape)
    for got, want in zip(C.conv_backward_naive(dout.astype(">f8"), cache), C.conv_backward_naive(dout, ref_cache)):
        assert got.dtype == np.float64 and np.array_equal(got, want)
    s, y = rng.standard_normal((4, 5)), np.array([0, 1, 2, 3])
    assert C.softmax_loss(s.astype(">f8"), y)[0] == C.softmax_loss(s, y)[0]
    assert np.array_equal(C.relu_forward(s.astype(">f8"))[0], np.maximum(s, 0))
    pool = {"pool_height": 2, "pool_width": 2, "stride": 2}
    assert np.array_equal(C.max_pool_forward_naive(big[0], pool)[0], C.max_pool_forward_naive(x, pool)[0])

def _numpy_strided_cols(x, w, conv_param):
    # The assignment's conv_forward_strides column matrix, built the way it builds it.
    N, Cc, H, W = x.shape
    F, _, HH, WW = w.shape
    s, p = conv_param["stride"], conv_param["pad"]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    H, W = H + 2 * p, W + 2 * p
    oh, ow = (H - HH) // s + 1, (W - WW) // s + 1
    strides = xp.itemsize * np.array((H * W, W, 1, Cc * H * W, s * W, s))
    cols = np.lib.stride_tricks.as_strided(xp, shape=(Cc, HH, WW, N, oh, ow), strides=strides)
    return np.ascontiguousarray(cols).reshape(Cc * HH * WW, N * oh * ow)


@pytest.mark.parametrize("hh, ww, pad, sides", [(2, 2, "same", ((0, 1), (0, 1))), (4, 3, "same", ((1, 2), (1, 1))),
                                                 (3, 3, (1, 0), ((1, 1), (0, 0))), (3, 3, "valid", ((0, 0), (0, 0)))])
def test_fast_layer_cols_take_every_padding_the_op_takes(hh, ww, pad, sides):
    """conv_param's 'pad' as gpuconv's op takes it (a pair, 'valid', 'same' with an even filter:
    PyTorch's extra zero after the image): the output and x_cols are those of x padded by hand.
    Before, x_cols failed on anything but an int (TypeError in 2 * pad)."""
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, hh, ww)), rng.standard_normal(4)
    xpad = np.pad(x, ((0, 0), (0, 0)) + sides)
    ref, ref_cache = C.conv_forward_fast(xpad, w, b, {"stride": 1, "pad": 0})
    out, cache = C.conv_forward_fast(x, w, b, {"stride": 1, "pad": pad})
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(cache[4], ref_cache[4])
    dout = rng.standard_normal(out.shape)
    dx, dw, db = C.conv_backward_fast(dout, cache)
    rdx, rdw, rdb = C.conv_backward_fast(dout, ref_cache)
    (top, _), (left, _) = sides
    np.testing.assert_allclose(dx, rdx[:, :, top:top + 6, left:left + 5], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, rdw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, rdb, rtol=1e-12, atol=1e-12)


def test_fast_layer_caches_have_the_assignment_layout():
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((2, 3, 7, 7)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    cp = {"stride": 2, "pad": 1}
    out, cache = C.conv_forward_fast(x, w, b, cp)
    assert len(cache) == 5
    cx, cw, cb, cparam, x_cols = cache                       # unpacks to five, as students' code expects
    assert cx is x and cw is w and cb is b and cparam is cp
    np.testing.assert_array_equal(x_cols, _numpy_strided_cols(x, w, cp))
    res = w.reshape(4, -1) @ x_cols + b[:, None]             # a student's own backward can use x_cols
    np.testing.assert_allclose(res.reshape(4, 2, 4, 4).transpose(1, 0, 2, 3), out, rtol=1e-12)
    _, cache = C.conv_forward_im2col(x, w, b, cp)
    np.testing.assert_array_equal(cache[4], _numpy_strided_cols(x, w, cp).reshape(27, 2, 16).transpose(0, 2, 1)
                                  .reshape(27, 32))
    xp = rng.standard_normal((2, 3, 4, 6))
    _, (method, (px, x_reshaped, pout)) = C.max_pool_forward_fast(xp, {"pool_height": 2, "pool_width": 2, "stride": 2})
    assert method == "reshape" and px is xp and x_reshaped.shape == (2, 3, 2, 2, 3, 2)
    np.testing.assert_array_equal(pout, x_reshaped.max(axis=3).max(axis=4))
    pp = {"pool_height": 3, "pool_width": 3, "stride": 1}
    _, (method, (px, cols, argmax, param)) = C.max_pool_forward_fast(xp, pp)
    assert method == "im2col" and param is pp and cols.shape == (9, 2 * 3 * 2 * 4)
    np.testing.assert_array_equal(argmax, cols.argmax(axis=0))
    # Our backward takes hand-built caches of both layouts too.
    dout = rng.standard_normal((2, 4, 4, 4))
    for got, want in zip(C.conv_backward_fast(dout, tuple(C.conv_forward_fast(x, w, b, cp)[1])),
                         C.conv_backward_fast(dout, C.conv_forward_fast(x, w, b, cp)[1])):
        np.testing.assert_array_equal(got, want)


def test_load_cifar_batch_takes_the_length_from_the_file(subset_dir):
    X, Y = C.load_CIFAR_batch(subset_dir / "data_batch_1")
    assert X.shape == (1102, 32, 32, 3) and X.dtype == np.float64 and Y.shape == (1102,)


# ----------------------------------------------------------------------------- the device switch
def _net_step(x, p):
    cp, pp = {"stride": 1, "pad": 1}, {"pool_height": 2, "pool_width": 2, "stride": 2}
    h, c1 = C.conv_relu_pool_forward(x, p["W1"], p["b1"], cp, pp)
    h, c2 = C.conv_bn_relu_forward(h, p["W2"], p["b2"], p["g"], p["be"], cp, {"mode": "train"})
    s, c3 = C.affine_forward(h, p["W3"], p["b3"])
    loss, ds = C.softmax_loss(s, np.array([1, 0]))
    dh, dW3, db3 = C.affine_backward(ds, c3)
    dh, dW2, db2, dg, dbe = C.conv_bn_relu_backward(dh, c2)
    dx, dW1, db1 = C.conv_relu_pool_backward(dh, c1)
    return loss, [dx, dW1, db1, dW2, db2, dg, dbe, dW3, db3]


def test_use_device_sim_runs_the_kernels_with_numpy_in_and_out():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 4, 4))
    p = {"W1": rng.standard_normal((3, 2, 3, 3)), "b1": rng.standard_normal(3), "W2": rng.standard_normal((3, 3, 3, 3)),
         "b2": rng.standard_normal(3), "g": rng.standard_normal(3), "be": rng.standard_normal(3),
         "W3": rng.standard_normal((12, 2)), "b3": rng.standard_normal(2)}
    want_loss, want = _net_step(x, p)
    C.param_store.clear()
    C.device_stats.reset()
    with C.use_device("sim"), kernels.launch_log() as log:
        loss, got = _net_step(x, p)
        uploads_first = C.device_stats.param_uploads
        loss2, _ = _net_step(x, p)                   # unchanged params: their device copies are reused
        assert C.device_stats.param_uploads == uploads_first and C.device_stats.param_hits >= uploads_first
        p["W1"][0, 0, 1, 1] += 0.5                   # an in-place edit, as a gradient check makes
        loss3, got3 = _net_step(x, p)
        assert C.device_stats.param_uploads == uploads_first + 1
    assert any(n.startswith("conv2d_forward") for n in log.names) and any(n.startswith("max_pool2d") for n in log.names)
    assert isinstance(loss, float) and all(type(g) is np.ndarray for g in got)
    assert abs(loss - want_loss) < 1e-12 and loss2 == loss
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)
    with C.use_device("cpu"):
        ref3, want3 = _net_step(x, p)                # the edit is seen: same as the CPU on the edited W1
    assert abs(loss3 - ref3) < 1e-12 and abs(loss3 - loss) > 1e-6
    np.testing.assert_allclose(got3[1], want3[1], rtol=1e-9, atol=1e-12)


def test_use_device_gradient_check_sees_every_perturbation():
    """eval_numerical_gradient perturbs a weight in place: a stale device copy would give zeros."""
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((1, 1, 3, 3)), rng.standard_normal((2, 1, 2, 2)), rng.standard_normal(2)
    cp = {"stride": 1, "pad": 0}
    dout = rng.standard_normal((1, 2, 2, 2))
    with C.use_device("sim"):
        out, cache = C.conv_forward_fast(x, w, b, cp)
        _, dw, _ = C.conv_backward_fast(dout, cache)
        num = C.eval_numerical_gradient_array(lambda v: C.conv_forward_fast(x, v, b, cp)[0], w, dout)
    assert C.rel_error(num, dw) < 1e-8 and np.abs(num).max() > 0.1


def test_solver_and_model_under_use_device_sim_match_the_cpu():
    def train():
        np.random.seed(0)
        model = C.ThreeLayerConvNet(input_dim=(3, 4, 4), num_filters=2, filter_size=3, hidden_dim=3,
                                    weight_scale=1e-1, dtype=np.float64)
        rng = np.random.default_rng(5)
        data = {"X_train": rng.standard_normal((4, 3, 4, 4)), "y_train": rng.integers(0, 10, 4),
                "X_val": rng.standard_normal((2, 3, 4, 4)), "y_val": rng.integers(0, 10, 2)}
        solver = C.Solver(model, data, update_rule="adam", batch_size=2, num_epochs=1, verbose=False)
        solver.train()
        return solver.loss_history, model.params
    want_losses, want_params = train()
    with C.use_device("sim"):
        losses, params = train()
    np.testing.assert_allclose(losses, want_losses, rtol=1e-12)
    for k in want_params:
        assert type(params[k]) is np.ndarray
        np.testing.assert_allclose(params[k], want_params[k], rtol=1e-10, atol=1e-14)


def test_redirect_refuses_a_package_whose_layer_modules_are_already_imported(tmp_path, monkeypatch):
    pkg = tmp_path / "early_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "layers.py").write_text("def affine_forward(x, w, b):\n    return 'student'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import early_pkg.layers  # noqa: F401
    try:
        with pytest.raises(RuntimeError, match=r"before early_pkg's layer modules are imported.*early_pkg.layers"):
            C.redirect("early_pkg")
    finally:
        import sys
        for k in [k for k in sys.modules if k.startswith("early_pkg")]:
            del sys.modules[k]


def test_redirect_serves_modules_the_package_lacks(tmp_path, monkeypatch):
    import sys
    pkg = tmp_path / "bare_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    hook = C.redirect("bare_pkg", edition=2017)
    try:
        import bare_pkg.fast_layers
        import bare_pkg.optim
        assert bare_pkg.optim.adam is C.e2017.adam and bare_pkg.fast_layers.conv_forward_fast is C.conv_forward_fast
    finally:
        hook.remove()
        for k in [k for k in sys.modules if k.startswith("bare_pkg")]:
            del sys.modules[k]


def _package(tmp_path, monkeypatch, name, files):
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for fname, text in files.items():
        (pkg / fname).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))


def _forget(name):
    import sys
    for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[k]


# A fast_layers.py as students have it: the starter's guarded import of the Cython extension (here
# never built) with its build instructions, its strategies, and a helper the student added.
STUDENT_FAST_LAYERS = """\
import numpy as np
try:
    from {pkg}.im2col_cython import col2im_cython, im2col_cython
except ImportError:
    print('run the following from the {pkg} directory and try again:')
    print('python setup.py build_ext --inplace')


def conv_forward_strides(x, w, b, conv_param):
    raise AssertionError("the student's own strided convolution ran")


conv_forward_fast = conv_forward_strides


def conv_forward_same(x, w, b):
    \"\"\"A student's addition: a stride-1 convolution keeping the size, through conv_forward_fast.\"\"\"
    return conv_forward_fast(x, w, b, {{'stride': 1, 'pad': (w.shape[2] - 1) // 2}})
"""
STUDENT_LAYER_UTILS = """\
from {pkg}.fast_layers import *


def conv_same_relu_forward(x, w, b):
    out, conv_cache = conv_forward_same(x, w, b)
    return np.maximum(out, 0), conv_cache
"""


def test_redirect_keeps_what_a_student_added_to_fast_layers(tmp_path, monkeypatch, capsys):
    _package(tmp_path, monkeypatch, "fl_pkg", {"fast_layers.py": STUDENT_FAST_LAYERS.format(pkg="fl_pkg"),
                                               "layer_utils.py": STUDENT_LAYER_UTILS.format(pkg="fl_pkg")})
    hook = C.redirect("fl_pkg")
    try:
        import fl_pkg.fast_layers as fl
        import fl_pkg.layer_utils as lu
        # no instructions to build an extension gpuconv does not need
        assert "build_ext" not in capsys.readouterr().out
        assert fl.conv_forward_fast is C.conv_forward_fast and fl.conv_forward_strides is C.conv_forward_strides
        r = np.random.RandomState(0)
        x, w, b = r.randn(2, 3, 6, 6), r.randn(4, 3, 3, 3), r.randn(4)
        want, _ = C.conv_forward_naive(x, w, b, {"stride": 1, "pad": 1})
        out, cache = fl.conv_forward_same(x, w, b)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
        assert len(cache) == 5                         # gpuconv's conv_forward_fast cache
        out, _ = lu.conv_same_relu_forward(x, w, b)
        np.testing.assert_allclose(out, np.maximum(want, 0), rtol=1e-12, atol=1e-12)
        assert lu.conv_relu_forward is C.conv_relu_forward
    finally:
        hook.remove()
        _forget("fl_pkg")


@pytest.mark.parametrize("broken", [
    "print 'run the following from the cs231n directory and try again:'\n",     # the 2016 starter's
    "def conv_forward_half_done(x):\n    return x\n\nimport a_package_nobody_installed\n",
])
def test_redirect_serves_gpuconvs_fast_layers_where_the_students_file_cannot_run(tmp_path, monkeypatch, broken):
    _package(tmp_path, monkeypatch, "fl_broken_pkg", {"fast_layers.py": broken})
    hook = C.redirect("fl_broken_pkg", edition=2016)
    try:
        import fl_broken_pkg.fast_layers as fl
        assert fl.conv_forward_fast is C.conv_forward_fast
        assert not hasattr(fl, "conv_forward_half_done")    # nothing of a file that failed half-way
    finally:
        hook.remove()
        _forget("fl_broken_pkg")


# An optim.py as students write it: RMSProp with epsilon inside the square root, an Adam without
# bias correction (both train; neither is the starter's formula, which gpuconv's rules follow).
STUDENT_OPTIM = """\
import numpy as np


def rmsprop(w, dw, config=None):
    if config is None: config = {}
    config.setdefault('learning_rate', 1e-2)
    config.setdefault('decay_rate', 0.99)
    config.setdefault('epsilon', 1e-8)
    config.setdefault('cache', np.zeros_like(w))
    config['cache'] = config['decay_rate'] * config['cache'] + (1 - config['decay_rate']) * dw ** 2
    return w - config['learning_rate'] * dw / np.sqrt(config['cache'] + config['epsilon']), config


def adam(w, dw, config=None):
    if config is None: config = {}
    config.setdefault('learning_rate', 1e-3)
    config.setdefault('m', np.zeros_like(w))
    config.setdefault('v', np.zeros_like(w))
    config['m'] = 0.9 * config['m'] + 0.1 * dw
    config['v'] = 0.999 * config['v'] + 0.001 * dw ** 2
    return w - config['learning_rate'] * config['m'] / (np.sqrt(config['v']) + 1e-8), config
"""


def test_redirect_keeps_the_students_own_update_rules(tmp_path, monkeypatch):
    """The rules run on the model's host parameters either way: a student's variant trains as without
    gpuconv (its numbers are not the starter formula's), and the layers are still gpuconv's."""
    _package(tmp_path, monkeypatch, "own_optim_pkg", {"optim.py": STUDENT_OPTIM, "layers.py": ""})
    hook = C.redirect("own_optim_pkg", edition=2019)
    try:
        import own_optim_pkg.layers
        import own_optim_pkg.optim as optim
        assert own_optim_pkg.layers.affine_forward is C.affine_forward
        w = np.linspace(-0.4, 0.6, num=20).reshape(4, 5)
        dw = np.linspace(-0.6, 0.4, num=20).reshape(4, 5)
        next_w, config = getattr(optim, "rmsprop")(w, dw, {"learning_rate": 1e-2})   # as the Solver calls it
        np.testing.assert_allclose(next_w, w - 1e-2 * dw / np.sqrt(0.01 * dw ** 2 + 1e-8), rtol=1e-12)
        starter, _ = C.rmsprop(w, dw, {"learning_rate": 1e-2})
        assert np.abs(next_w - starter).max() > 1e-6            # the two formulas do differ here
        next_w, config = optim.adam(w, dw)
        np.testing.assert_allclose(next_w, w - 1e-3 * (0.1 * dw) / (np.sqrt(0.001 * dw ** 2) + 1e-8), rtol=1e-12)
        assert "t" not in config
    finally:
        hook.remove()
        _forget("own_optim_pkg")


def test_redirect_does_not_mind_an_optim_imported_first(tmp_path, monkeypatch):
    _package(tmp_path, monkeypatch, "early_optim_pkg", {"optim.py": STUDENT_OPTIM})
    import early_optim_pkg.optim  # noqa: F401
    hook = C.redirect("early_optim_pkg")
    try:
        import early_optim_pkg.layers
        assert early_optim_pkg.layers.affine_forward is C.affine_forward
    finally:
        hook.remove()
        _forget("early_optim_pkg")


def _student_dropout(says):
    """A layers.py whose dropout_forward carries the starter's docstring of its year (students keep
    it): 'drop' in 2016-2017, 'keep' from 2018."""
    return f"""\
import numpy as np


def dropout_forward(x, dropout_param):
    \"\"\"
    Performs the forward pass for (inverted) dropout.

    Inputs:
    - x: Input data, of any shape
    - dropout_param: A dictionary with the following keys:
      - p: Dropout parameter. We {says} each neuron output with probability p.
      - mode: 'test' or 'train'.
    \"\"\"
    raise AssertionError("the student's own dropout ran")
"""


def _zeros_dropped(layers, p):
    np.random.seed(0)
    out, _ = layers.dropout_forward(np.ones((200, 200)), {"mode": "train", "p": p})
    return float((out == 0).mean())


def test_redirect_follows_a_2017_files_dropout_when_no_edition_is_given(tmp_path, monkeypatch):
    _package(tmp_path, monkeypatch, "drop_pkg", {"layers.py": _student_dropout("drop")})
    hook = C.redirect("drop_pkg")
    try:
        import drop_pkg.layers as layers
        assert layers.dropout_forward is C.e2017.dropout_forward
        assert abs(_zeros_dropped(layers, 0.25) - 0.25) < 0.01        # p drops a unit, as the file says
        assert layers.affine_forward is C.affine_forward
    finally:
        hook.remove()
        _forget("drop_pkg")


def test_redirect_keeps_the_latest_dropout_for_a_file_that_says_p_keeps(tmp_path, monkeypatch):
    _package(tmp_path, monkeypatch, "keep_pkg", {"layers.py": _student_dropout("keep")})
    hook = C.redirect("keep_pkg")
    try:
        import keep_pkg.layers as layers
        assert layers.dropout_forward is C.dropout_forward and abs(_zeros_dropped(layers, 0.25) - 0.75) < 0.01
    finally:
        hook.remove()
        _forget("keep_pkg")


@pytest.mark.parametrize("says, edition", [("drop", 2019), ("keep", 2017)])
def test_redirect_warns_where_the_edition_given_contradicts_the_files_dropout(tmp_path, monkeypatch, says, edition):
    _package(tmp_path, monkeypatch, "clash_pkg", {"layers.py": _student_dropout(says)})
    hook = C.redirect("clash_pkg", edition=edition)
    try:
        with pytest.warns(UserWarning, match=rf"'We {says} each neuron output with probability p'.*"
                                             rf"edition={edition}.*p drops a unit in 2016 and 2017"):
            import clash_pkg.layers as layers
        # the edition given is what is served
        assert layers.dropout_forward is C.edition(edition).dropout_forward
    finally:
        hook.remove()
        _forget("clash_pkg")


def test_bench_cs231n_validates_on_the_simulator(tmp_path):
    import json
    import os
    import pathlib
    import subprocess
    import sys
    repo = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_cs231n.py"), "--device", "sim", "--tiny",
                           "--json"], capture_output=True, text=True, timeout=300, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo), "GPUCONV_BENCH_RESULTS": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout)
    assert rec["validation"]["passed"] and len(rec["validation"]["checks"]) >= 10
    assert rec["results"]["device_s_per_iteration"] is None      # the simulator is not timed

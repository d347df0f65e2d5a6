"""Every kernel under AddressSanitizer + UBSan on the host simulator, in both schedule orders.

The kernels run in a subprocess started by ``gpuconv.hostsim.run_sanitized`` (python with
libasan preloaded; every simulator build there is sanitized). Shapes are small but chosen to
reach every guarded edge: partial 64-wide GEMM tiles in both dimensions, a partial 8-deep
reduction round, padding wider than the filter, several backward-weight splits, overlapping
pooling windows, ReLU lengths that leave a vector tail and a misaligned view. Any out-of-bounds
read or write, use of an uninitialized shared tile turned into UB, or signed overflow ends the
child with a report naming the kernel, block and thread.
"""
from __future__ import annotations

import textwrap

import pytest

from gpuconv import hostsim
from test_nvrtc import ENTRIES

SNIPPET = textwrap.dedent("""
    import numpy as np
    from gpuconv import kernels
    from gpuconv.ops import _launch_conv2d as LC, _launch_pool2d as LP, _launch_relu as LR
    from gpuconv.ops import conv2d as C, pool2d as P

    ran = set()
    real_launch = kernels.launch
    def counting(*a, **k):
        ran.add(a[1])
        return real_launch(*a, **k)
    kernels.launch = counting
    LC.MIN_SPLIT_CHUNK = 8  # several backward-weight splits even at these sizes
    rng = np.random.default_rng(0)

    def close(a, b, tol=2e-4):
        assert a.shape == b.shape and np.allclose(a, b, rtol=tol, atol=tol), float(np.abs(a - b).max())

    for xs, ws, stride, pad in [((1, 5, 6, 13), (65, 5, 3, 3), (1, 1), (1, 1)),
                                ((2, 3, 7, 9), (4, 3, 5, 3), (2, 3), (3, 0)),
                                ((1, 2, 3, 3), (1, 2, 3, 3), (1, 1), (0, 0)),
                                ((2, 3, 9, 9), (130, 3, 3, 3), (1, 1), (1, 1)),   # M, K > 128: v3 edges
                                ((1, 16, 5, 5), (130, 16, 3, 3), (1, 1), (1, 1))]:  # C*FH*FW = 144 > 128
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        b = rng.standard_normal(ws[0]).astype(np.float32)
        ry, rc = C._conv2d_forward_reference(x, w, b, stride, pad)
        dy = rng.standard_normal(ry.shape).astype(np.float32)
        rdx, rdw, rdb = C._conv2d_backward_reference(dy, rc)
        for v in ("v1", "v2", "v3"):
            with kernels.use_variant(conv2d_forward=v, conv2d_backward_data=v, conv2d_backward_weight=v):
                y, cache = LC.conv2d_forward_kernel(x, w, b, stride, pad, target="sim")
                yr, _ = LC.conv2d_forward_kernel(x, w, None, stride, pad, target="sim", relu=True)
                dx, dw, db = LC.conv2d_backward_kernel(dy, cache, target="sim")
            close(y, ry); close(yr, np.maximum(ry - b[None, :, None, None], 0))
            close(dx, rdx); close(dw, rdw); close(db, rdb)

    x = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)
    for ks, st in [((3, 3), (2, 2)), ((2, 3), (1, 3)), ((7, 9), (1, 1))]:
        y, c = LP.max_pool2d_forward_kernel(x, ks, st, target="sim")
        ry, rc = P._max_pool2d_forward_reference(x, ks, st)
        assert np.array_equal(y, ry) and np.array_equal(c.argmax, rc.argmax)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        assert np.array_equal(LP.max_pool2d_backward_kernel(dy, c, target="sim"),
                              P._max_pool2d_backward_reference(dy, rc))
        y, c = LP.avg_pool2d_forward_kernel(x, ks, st, target="sim")
        close(y, P._avg_pool2d_forward_reference(x, ks, st)[0])
        close(LP.avg_pool2d_backward_kernel(dy, c, target="sim"), P._avg_pool2d_backward_reference(dy, c))

    for dtype in (np.float32, np.float64):
        for n in (1, 6, 257):
            base = rng.standard_normal(n + 1).astype(dtype)
            for xv in (base[:n], base[1:]):  # aligned (v2 + tail) and misaligned (v1 fallback)
                for v in ("v1", "v2"):
                    with kernels.use_variant(relu_forward=v, relu_backward=v):
                        y, c = LR.relu_forward_kernel(xv, target="sim")
                        dx = LR.relu_backward_kernel(xv[::-1].copy(), c, target="sim")
                    assert np.array_equal(y, np.maximum(xv, dtype(0)))
                    assert np.array_equal(dx, np.where(xv > 0, xv[::-1], dtype(0)))
    xb = rng.standard_normal((2, 3, 5)).astype(np.float32)
    bb = rng.standard_normal(3).astype(np.float32)
    yb = np.empty_like(xb)
    kernels.launch("relu", "bias_relu_forward", np.float32, "sim", (1, 1, 1), (256, 1, 1),
                   (xb, bb, yb, np.int64(xb.size), np.int32(3), np.int32(5), np.int32(1)))
    assert np.array_equal(yb, np.maximum(xb + bb[None, :, None], np.float32(0)))
    # the fused augmentation kernel
    from gpuconv.data import crop_flip, normalize
    from gpuconv.data._launch_augment import augment_batch_kernel
    for shape, p in [((5, 3, 7, 9), 3), ((2, 1, 1, 1), 4), ((4, 2, 5, 5), 0)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        mean = np.arange(1, shape[1] + 1, dtype=np.float32)
        std = mean + 1
        idx = rng.integers(0, shape[0], 6)
        oy, ox = rng.integers(0, 2 * p + 1, 6), rng.integers(0, 2 * p + 1, 6)
        flip = rng.integers(0, 2, 6).astype(bool)
        for crop in (True, False):
            a, b = (oy, ox) if crop else (None, None)
            got = augment_batch_kernel(images, idx, a, b, flip, mean, std, p, np.float32, target="sim")
            want = normalize(crop_flip(images[idx], a, b, flip, p), mean, std)
            assert np.array_equal(got, want)
    bad = augment_batch_kernel(images, np.array([9, -4]), None, None, None, mean, std, 0, np.float32, target="sim")
    assert np.isnan(bad).all()
    print("RAN", ",".join(sorted(ran)))
""")

# Every entry point of every kernel file: a new kernel added without a sanitized run fails here.
EXPECTED = {name for names in ENTRIES.values() for name in names}



@pytest.mark.skipif(not hostsim.sanitizers_available(), reason="g++ or its ASan/UBSan runtimes are not installed")
@pytest.mark.parametrize("reverse", [False, True], ids=["forward-order", "reverse-order"])
def test_every_kernel_is_clean_under_asan_ubsan(reverse):
    res = hostsim.run_sanitized(SNIPPET, reverse=reverse, timeout=900)
    assert res.ok, f"sanitized run failed ({res.location or 'no kernel location'}):\n{res.stderr[-6000:]}"
    ran = set(res.stdout.split("RAN ", 1)[1].split()[0].split(","))
    assert ran == EXPECTED, f"kernels not exercised: {sorted(EXPECTED - ran)}"
    assert "runtime error" not in res.stderr and "AddressSanitizer" not in res.stderr


def test_the_sanitizer_catches_an_out_of_bounds_write():
    """The harness can fail: a kernel writing one element past the end is reported, named."""
    if not hostsim.sanitizers_available():
        pytest.skip("g++ or its ASan/UBSan runtimes are not installed")
    code = textwrap.dedent("""
        import numpy as np
        from gpuconv import hostsim
        src = 'extern "C" __global__ void past_end(float* y, int n) { y[threadIdx.x] = 1.0f; }'
        y = np.zeros(4, np.float32)
        hostsim.compile(src, "oob").get_function("past_end")((1,), (5,), (y, np.int32(4)))
    """)
    res = hostsim.run_sanitized(code)
    assert not res.ok
    assert "past_end" in res.stderr

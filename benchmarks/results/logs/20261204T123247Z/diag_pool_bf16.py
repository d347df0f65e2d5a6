"""One-off GPU diagnosis: pool2d backward (old vs new covering_range), CuPy bfloat16 promotion,
the channels_last bf16 op chain. Writes $OUT/diag.tar.gz (PTX, SASS)."""
import os, subprocess, sys, tempfile, traceback
os.environ["GPUCONV_CUDA_CACHE"] = tempfile.mkdtemp()
sys.path.insert(0, ".")
import numpy as np, ml_dtypes, cupy as cp
from cupy_backends.cuda.libs import nvrtc
import gpuconv
from gpuconv import kernels, layout
from gpuconv.ops import _launch_pool2d as LP
OUT = os.environ.get("OUT", "/tmp")
D = tempfile.mkdtemp()
print("nvrtc", nvrtc.getVersion(), "cupy", cp.__version__)
BF = np.dtype(ml_dtypes.bfloat16)
X = np.array([[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]], np.float32)[None, None]
old = open(".gpu-diag/pool2d_old.cu").read()
real = kernels._read
for tag, text in (("old", old), ("new", None)):
    kernels._read = (lambda n, t=text: t if (t is not None and n == "pool2d.cu") else real(n))
    kernels.clear_cache()
    try:
        src = kernels.build_source("pool2d", np.float32)
        open(f"{D}/pool2d_{tag}.ptx", "wb").write(kernels.nvrtc_compile(src, "pool2d", np.float32, "compute_90"))
        open(f"{D}/pool2d_{tag}.cubin", "wb").write(kernels.nvrtc_compile(src, "pool2d", np.float32, "sm_90"))
        for fn in ("avg_pool2d_backward", "max_pool2d_backward", "lp_pool2d_backward"):
            r = subprocess.run(["cuobjdump", "-sass", "-fun", fn, f"{D}/pool2d_{tag}.cubin"], capture_output=True, text=True)
            open(f"{D}/{fn}_{tag}.sass", "w").write(r.stdout + r.stderr)
        y, c = LP.avg_pool2d_forward_kernel(cp.asarray(X), (2, 2), (2, 2), target="cuda")
        dx = LP.avg_pool2d_backward_kernel(cp.asarray(np.array([[[[4, 8], [0, -4]]]], np.float32)), c, target="cuda")
        print(tag, "avg backward", cp.asnumpy(dx)[0, 0].tolist(), "want [[1,1,2,2],[1,1,2,2],[0,0,-1,-1],[0,0,-1,-1]]")
        y, c = LP.max_pool2d_forward_kernel(cp.asarray(X), (2, 2), (2, 2), target="cuda")
        dx = LP.max_pool2d_backward_kernel(cp.asarray(np.array([[[[1, 2], [3, 4]]]], np.float32)), c, target="cuda")
        print(tag, "max backward", cp.asnumpy(dx)[0, 0].tolist(), "want [[0,0,0,0],[0,1,0,2],[3,0,0,0],[0,0,0,4]]")
    except Exception:
        traceback.print_exc()
kernels._read = real
kernels.clear_cache()

print("--- CuPy bfloat16 promotion")
a = cp.asarray(np.linspace(-2, 2, 8).astype(BF))
f32 = cp.asarray(np.float32(2))
cases = {"a*0.125": lambda: a * 0.125, "a+a": lambda: a + a, "a*a": lambda: a * a, "a/3": lambda: a / 3,
         "-a": lambda: -a, "a*np.float32(2)": lambda: a * np.float32(2), "a*f32_0d": lambda: a * f32,
         "a*2": lambda: a * 2, "a.sum()": lambda: a.sum(), "a.sum(dtype=f32)": lambda: a.sum(dtype=np.float32),
         "a.mean()": lambda: a.mean(), "a.max()": lambda: a.max(), "maximum(a,0)": lambda: cp.maximum(a, 0),
         "where(a>0,a,0)": lambda: cp.where(a > 0, a, 0), "where(a>0,a,a)": lambda: cp.where(a > 0, a, a),
         "a.astype(f32)": lambda: a.astype(np.float32), "f32arr.astype(bf)": lambda: cp.ones(3, np.float32).astype(BF),
         "sqrt(a)": lambda: cp.sqrt(a), "exp(a)": lambda: cp.exp(a), "a**2": lambda: a ** 2,
         "a-a.mean()": lambda: a - a.mean(), "zeros_like": lambda: cp.zeros_like(a), "a.copy()": lambda: a.copy(),
         "ascontiguous(a[::2])": lambda: cp.ascontiguousarray(a[::2]), "a*0": lambda: a * 0, "a*0+1": lambda: a * 0 + 1,
         "a.reshape(2,4).T.copy()": lambda: a.reshape(2, 4).T.copy(), "stack": lambda: cp.stack([a, a]),
         "a @ a (2x4 . 4x2)": lambda: a.reshape(2, 4) @ a.reshape(4, 2), "a.view(uint16)": lambda: a.view(np.uint16)}
for name, f in cases.items():
    try:
        r = f()
        want = None
        try:
            na = np.linspace(-2, 2, 8).astype(BF)
            want = {"a*0.125": na * 0.125, "a+a": na + na, "a/3": na / 3, "a*2": na * 2}.get(name)
        except Exception:
            pass
        ok = "" if want is None else f" values {'==' if np.array_equal(cp.asnumpy(r).astype(np.float64), want.astype(np.float64)) else '!='} numpy ({want.dtype})"
        print(f"{name:28s} -> {r.dtype} {getattr(r, 'shape', '')}{ok}")
    except Exception as e:
        print(f"{name:28s} -> ERROR {type(e).__name__}: {str(e)[:150]}")

print("--- the channels_last bf16 chain (tests/test_layout._network_step)")
from gpuconv.ops import (conv2d_forward, conv2d_backward, batchnorm2d_forward, batchnorm2d_backward, relu_forward,
                         relu_backward, max_pool2d_forward, max_pool2d_backward, avg_pool2d_forward, avg_pool2d_backward,
                         dropout_forward, dropout_backward)
def desc(a):
    return f"{a.dtype} {tuple(a.shape)} strides {a.strides} cl={gpuconv.is_channels_last(a)} finite={bool(cp.isfinite(a.astype(np.float32)).all())} absmax={float(cp.abs(a.astype(np.float32)).max()):.4g}"
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 8, 6, 6)).astype(BF); w = rng.standard_normal((16, 8, 3, 3)).astype(BF)
bias = rng.standard_normal(16).astype(BF)
gamma, beta = cp.ones(16, np.float32), cp.zeros(16, np.float32)
for cl in (False, True):
    try:
        X = cp.asarray(x); X = gpuconv.to_channels_last(X) if cl else X
        y, c1 = conv2d_forward(X, cp.asarray(w), cp.asarray(bias), 1, 1); print(cl, "conv y", desc(y))
        b, c2 = batchnorm2d_forward(y, gamma, beta, None, None); print(cl, "bn", desc(b))
        r, c3 = relu_forward(b); print(cl, "relu", desc(r))
        m, c4 = max_pool2d_forward(r, 2); print(cl, "maxpool", desc(m))
        a2, c5 = avg_pool2d_forward(m, 1); print(cl, "avgpool", desc(a2))
        d, c6 = dropout_forward(a2, 0.25, key=11); print(cl, "dropout", desc(d))
        g = gpuconv.to_channels_last(d * 0 + 1) if cl else d * 0 + 1; print(cl, "g", desc(g))
        g = dropout_backward(g, c6); print(cl, "d dropout", desc(g))
        g = avg_pool2d_backward(g, c5); print(cl, "d avgpool", desc(g))
        g = max_pool2d_backward(g, c4); print(cl, "d maxpool", desc(g))
        g = relu_backward(g, c3); print(cl, "d relu", desc(g))
        g, dgamma, _ = batchnorm2d_backward(g, c2); print(cl, "d bn", desc(g))
        dx, dw, db = conv2d_backward(g, c1); print(cl, "dx", desc(dx), "dw", desc(dw))
        for var in ("v2", "tc"):
            with kernels.use_variant(conv2d_backward_data=var, conv2d_backward_weight=var):
                dx, dw, db = conv2d_backward(g, c1); print(cl, var, "dx", desc(dx), "dx[0,0,0,:3]", cp.asnumpy(dx.astype(np.float32))[0, 0, 0, :3])
    except Exception:
        traceback.print_exc()
subprocess.run(["tar", "-czf", f"{OUT}/diag.tar.gz", "-C", D, "."])

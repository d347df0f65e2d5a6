"""What makes the host wait inside syncguard.no_sync on this GPU (2 s guards)."""
import os, sys, traceback
sys.path.insert(0, "."); sys.path.insert(0, "benchmarks")
import numpy as np, cupy as cp, ml_dtypes
import gpuconv
from gpuconv import syncguard, models, amp, kernels
from gpuconv.optim import SGD
print("CUDA_MODULE_LOADING", os.environ.get("CUDA_MODULE_LOADING"))
def guard(what, fn):
    try:
        with syncguard.no_sync(what, timeout=2.0):
            fn()
        print(f"{what:40s} no wait")
    except syncguard.DeviceSynchronized as e:
        where = [l.strip() for l in str(e).splitlines() if l.strip().startswith("File")][-2:]
        print(f"{what:40s} WAITED  {' | '.join(where)}")
    except Exception as e:
        print(f"{what:40s} ERROR {type(e).__name__}: {e}")
cp.zeros(1).sum()
guard("warm: nothing", lambda: None)
guard("cudaMalloc 1 MiB (runtime.malloc)", lambda: cp.cuda.runtime.malloc(1 << 20))
p = cp.cuda.runtime.malloc(1 << 20)
guard("cudaFree", lambda: cp.cuda.runtime.free(p))
pool = cp.get_default_memory_pool()
guard("pool: a new 64 MiB block", lambda: cp.empty(1 << 24, np.float32))
k = cp.ElementwiseKernel("float32 x", "float32 y", "y = x * 3.0f + 1.0f", "fresh_kernel_diag")
a = cp.ones(8, np.float32)
guard("first launch of a fresh CuPy kernel", lambda: k(a))
guard("second launch of it", lambda: k(a))
bf = cp.asarray(np.ones((4, 8, 6, 6), ml_dtypes.bfloat16))
t = bf.transpose(0, 2, 3, 1)
cp.ascontiguousarray(t)
guard("bf16 ascontiguousarray (warm)", lambda: cp.ascontiguousarray(t))
# a bf16 fast_net step, warmed 5 times, then guarded one at a time
for prec in ("fp32", "bf16"):
    with gpuconv.default_device("cuda"):
        m = models.fast_net(width=8)
        opt = SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        x = cp.asarray(np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
        if amp.channels_last_for(prec):
            x = gpuconv.to_channels_last(x)
        y = cp.asarray(np.arange(16) % 10)
        for _ in range(5):
            amp.training_step(m, opt, x, y, prec)
        cp.cuda.Device().synchronize()
        for i in range(3):
            guard(f"{prec} fast_net step {6 + i}", lambda: amp.training_step(m, opt, x, y, prec))
            cp.cuda.Device().synchronize()
        print(prec, "pool used/total", pool.used_bytes(), pool.total_bytes())

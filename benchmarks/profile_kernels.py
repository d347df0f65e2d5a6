"""One convolution layer's three directions, for Nsight Compute: gpuconv's kernels (the "auto"
default, or ``--variant``) or cuDNN's through PyTorch, after a warm-up, between
cudaProfilerStart/Stop, so that ``ncu --profile-from-start off`` sees exactly those launches.

    ncu --profile-from-start off --section SpeedOfLight --section Occupancy \\
        python benchmarks/profile_kernels.py --layer 128,256,16 --precision bf16 --side gpuconv
    ncu --profile-from-start off ... python benchmarks/profile_kernels.py ... --side torch

The battery's ``ncu`` stage runs both sides on one fast_net layer: what the tensor-core kernels
are bound by (memory, issue, occupancy, shared-memory bank conflicts) beside cuDNN's.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_conv2d as BC  # noqa: E402
import common  # noqa: E402
from gpuconv import backend as B  # noqa: E402
from gpuconv import kernels  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=common.description(__doc__))
    p.add_argument("--layer", default="128,256,16", help="C,K,H: input channels, output channels, square size")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--precision", choices=tuple(BC.PRECISIONS), default="bf16")
    p.add_argument("--side", choices=("gpuconv", "torch"), default="gpuconv")
    p.add_argument("--variant", default=None, help="a conv2d variant for every direction (default: auto)")
    args = p.parse_args(argv)
    if not B.cuda_available():
        print(f"profile_kernels: no usable GPU ({B.cuda_status()}); this script exists to be profiled on one",
              file=sys.stderr)
        return common.NO_GPU_EXIT
    c, k, h = (int(v) for v in args.layer.split(","))
    host = BC.make_layer(args.batch, c, k, h, prec=args.precision)
    tf32 = BC.PRECISIONS[args.precision][1]
    cp = B.cupy_module()
    x, w, b, dy = BC.on_device(host, "cuda", args.precision)
    if args.side == "gpuconv":
        families = {f: args.variant for f in BC.DIRECTIONS.values()} if args.variant else {}

        def run():
            with kernels.use_variant(**families), kernels.use_variant("tf32", **families):
                for direction in BC.DIRECTIONS:
                    BC.run_direction(direction, x, w, b, dy, "cuda", tf32)
        from cupy.cuda import profiler
        start, stop = profiler.start, profiler.stop
    else:
        torch = common.torch_module()
        if torch is None:
            print("profile_kernels: --side torch needs PyTorch with CUDA", file=sys.stderr)
            return 1
        calls = BC.torch_calls(torch, x, w, b, dy, args.precision)  # the calls bench_conv2d times

        def run():
            with torch.no_grad():
                for call in calls.values():
                    call()
        start, stop = torch.cuda.profiler.start, torch.cuda.profiler.stop
    for _ in range(3):  # compiles, cuDNN's autotuning
        run()
    cp.cuda.Device().synchronize()
    start()
    run()
    cp.cuda.Device().synchronize()
    stop()
    print(f"profiled {args.side} conv {args.layer} batch {args.batch} {args.precision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The instruction mix of each tensor-core kernel's main loop, from its sm_90 SASS: what one k-tile
costs in issue slots, measurable without a GPU. With ``--build f32`` or ``f64``, the same for the
CUDA-core convolutions (kernels/conv2d.cu's v2 and v3: one shared-memory round of FFMAs or DFMAs).

    python benchmarks/sass_loop.py                  # bf16 build of kernels/conv2d_tc.cu and gemm_tc.cu
    python benchmarks/sass_loop.py --build tf32 --kernels conv2d_forward_tc128
    python benchmarks/sass_loop.py --build f32      # conv2d.cu's tiled kernels, float32
    python benchmarks/sass_loop.py --json

mma.sync kernels on Hopper are bound by instruction issue before the tensor cores: an SM issues
one instruction per cycle per scheduler, and an m16n8k16 keeps the tensor pipe busy for only a
few cycles, so every address computation, loader branch and ldmatrix in the loop competes with
the HMMAs (Nsight Compute on an H200: the integer pipe the busiest, 2.4 instructions per cycle).
The count per k-tile is a static proxy, not a timing: branches inside the loop (zero-fill edges,
the first layer's carries) are counted once whichever way they go.

The loop is the innermost backward branch enclosing every HMMA of the kernel (of a CUDA-core kernel: the
innermost one holding at least 64 FMAs, which leaves out v1's per-tap loops). Needs ``nvcc``
(ptxas, as tests/test_nvrtc.py) and ``cuobjdump`` (the CUDA toolkit's, or PyPI's
``nvidia-cuda-cuobjdump`` wheel unpacked, named by ``$CUOBJDUMP``); exits 2 naming what is missing.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from gpuconv import kernels, precision  # noqa: E402

BUILDS = {"bf16": (precision.bfloat16, False), "f16": (precision.float16, False), "tf32": (precision.float32, True),
          "f32": (precision.float32, False), "f64": (precision.float64, False)}
FILES = ("conv2d_tc", "gemm_tc")
CUDA_CORE_FILES = ("conv2d",)  # the f32 and f64 builds' files: their loops' math is FFMA/DFMA
# Instruction classes (the SASS opcode's first word).
CLASSES = {
    "mma": ("HMMA", "HGMMA"),
    "fma": ("FFMA", "DFMA"),
    "ldmatrix": ("LDSM",),
    "copy": ("LDGSTS", "LDG", "STS", "LDS", "LDGDEPBAR", "DEPBAR"),
    "integer": ("IMAD", "IADD3", "VIADD", "LOP3", "ISETP", "SHF", "LEA", "SEL", "IABS", "IMNMX", "PRMT", "MOV",
                "I2F", "F2I", "SGXT", "FLO", "POPC", "BMSK"),
    "uniform": ("ULDC", "UMOV", "UIADD3", "ULEA", "ULOP3", "USHF", "S2UR", "UISETP", "USEL"),
    "control": ("BRA", "BSSY", "BSYNC", "BAR", "NOP", "EXIT", "WARPSYNC", "WARPGROUP", "FENCE"),
}


def classify(opcode):
    for name, ops in CLASSES.items():
        if opcode in ops:
            return name
    return "other"


def tool(name, env=None):
    path = os.environ.get(env) if env else None
    return path if path and os.path.exists(path) else shutil.which(name)


def sass_of(op_file, build, workdir, nvcc, cuobjdump):
    dtype, tf32 = BUILDS[build]
    cu = workdir / f"{op_file}-{build}.cu"
    cu.write_text(kernels.build_source(op_file, dtype, tf32))
    cubin = cu.with_suffix(".cubin")
    arch = "sm_90a" if op_file in kernels.ARCH_SPECIFIC else "sm_90"  # as the GPU path builds it on Hopper
    subprocess.run([nvcc, "-cubin", f"-arch={arch}", *kernels.NVRTC_OPTIONS, str(cu), "-o", str(cubin)],
                   check=True, capture_output=True, text=True, timeout=600)
    return subprocess.run([cuobjdump, "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout


def opcode(text):
    """An instruction's opcode without its predicate and modifiers: "@!P0 LDG.E R2, ..." -> "LDG"."""
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def loops(sass, math="mma", least=1):
    """{kernel: Counter of opcodes in its main loop} for every kernel with HMMAs (HGMMAs: wgmma), or with
    ``math="fma"`` FFMAs/DFMAs, ``least`` of them in one loop at the least. A kernel that picks one of
    several instances of its loop at run time (the tensor-core weight gradient's 16-byte dY copies)
    has a loop per instance: the second and later are named "kernel#2", ... in code order."""
    out = {}
    for chunk in re.split(r"\n\s*Function : ", sass)[1:]:
        name = chunk.split("\n", 1)[0].strip()
        ins = [(int(a, 16), text.strip()) for a, text in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", chunk)]
        mma = [a for a, text in ins if opcode(text) in CLASSES[math]]
        if not mma:
            continue
        spans = []  # (start, end) of every backward branch's loop
        for a, text in ins:
            m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
            if m and int(m.group(1), 16) < a:
                spans.append((int(m.group(1), 16), a))
        # The innermost loops holding HMMAs, smallest first; an enclosing loop adds nothing new.
        chosen, covered = [], set()
        for start, end in sorted(spans, key=lambda s: s[1] - s[0]):
            inside = {a for a in mma if start <= a <= end}
            if len(inside) >= least and not inside & covered:
                chosen.append((start, end))
                covered |= inside
        for k, (start, end) in enumerate(sorted(chosen)):
            body = [opcode(text) for a, text in ins if start <= a <= end]
            out[name if k == 0 else f"{name}#{k + 1}"] = collections.Counter(body)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the first paragraph
    p.add_argument("--build", choices=tuple(BUILDS), default="bf16")
    p.add_argument("--kernels", default=None,
                   help="comma-separated kernel names (default: every one with HMMAs, or FMA loops in f32/f64)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    nvcc, cuobjdump = tool("nvcc"), tool("cuobjdump", "CUOBJDUMP")
    missing = [n for n, t in (("nvcc", nvcc), ("cuobjdump (or $CUOBJDUMP)", cuobjdump)) if t is None]
    if missing:
        print(f"sass_loop: {' and '.join(missing)} not found: this reads ptxas's SASS. Install the CUDA toolkit, "
              "or `pip download --no-deps nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm`, unzip them and set CUOBJDUMP "
              "to the first's bin/cuobjdump and NVDISASM_PATH to the second's bin", file=sys.stderr)
        return 2
    cuda_cores = args.build in ("f32", "f64")
    files, math, least = (CUDA_CORE_FILES, "fma", 64) if cuda_cores else (FILES, "mma", 1)
    wanted = set(args.kernels.split(",")) if args.kernels else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for op_file in files:
            try:
                sass = sass_of(op_file, args.build, pathlib.Path(tmp), nvcc, cuobjdump)
            except subprocess.CalledProcessError as e:  # (cuobjdump without nvdisasm says so on stderr)
                print(f"sass_loop: {pathlib.Path(e.cmd[0]).name} failed: {e.stderr.strip()}", file=sys.stderr)
                return 2
            for name, ops in loops(sass, math, least).items():
                if wanted and name.split("#")[0] not in wanted:
                    continue
                by_class = collections.Counter()
                for op, n in ops.items():
                    by_class[classify(op)] += n
                total = sum(ops.values())
                rows.append({"kernel": name, "build": args.build, "instructions": total, **dict(by_class),
                             f"per_{math}": total / max(1, by_class[math]), "top": ops.most_common(6)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    unit = "one shared-memory round" if cuda_cores else "one k-tile"
    print(f"sm_90 SASS, {args.build} build: instructions in one pass of each kernel's main loop ({unit})")
    cols = ["instructions", math, "ldmatrix", "copy", "integer", "uniform", "control", "other"]
    print(f"{'kernel':32s} " + " ".join(f"{c:>8s}" for c in cols) + f"  per {math}")
    for r in rows:
        print(f"{r['kernel']:32s} " + " ".join(f"{r.get(c, 0):8d}" for c in cols) + f"  {r[f'per_{math}']:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

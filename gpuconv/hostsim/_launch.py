"""SimModule / SimKernel: ctypes launches with the argument checks a GPU would not give."""
from __future__ import annotations

import ctypes
import dataclasses
import os
import threading

import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy: np.dtype('bfloat16'))
import numpy as np

from ._errors import BarrierDivergence, SimulatorError
from ._source import KernelDecl

# Codes of the signature ("=name": a struct element type naming its NumPy dtype, e.g. bfloat16).
_DTYPES = {"f4": np.float32, "f8": np.float64, "i1": np.int8, "i2": np.int16, "i4": np.int32, "i8": np.int64,
           "u1": np.uint8, "u2": np.uint16, "u4": np.uint32, "u8": np.uint64, "b1": np.bool_}
_CTYPES = {"f4": ctypes.c_float, "f8": ctypes.c_double, "i1": ctypes.c_int8, "i2": ctypes.c_int16,
           "i4": ctypes.c_int32, "i8": ctypes.c_int64, "u1": ctypes.c_uint8, "u2": ctypes.c_uint16,
           "u4": ctypes.c_uint32, "u8": ctypes.c_uint64, "b1": ctypes.c_bool}
# Vector element types (float4 ...): their alignment, which a vector load needs on a GPU.
_VEC_ALIGN = {"v2f4": 8, "v3f4": 4, "v4f4": 16, "v2f8": 16, "v4f8": 32, "v2i4": 8, "v3i4": 4, "v4i4": 16,
              "v2u4": 8, "v4u4": 16, "v4u1": 4, "v2i8": 16}
_VEC_NAME = {"v2f4": "float2", "v3f4": "float3", "v4f4": "float4", "v2f8": "double2", "v4f8": "double4",
             "v2i4": "int2", "v3i4": "int3", "v4i4": "int4", "v2u4": "uint2", "v4u4": "uint4", "v4u1": "uchar4",
             "v2i8": "longlong2"}
_C_NAME = {"f4": "float", "f8": "double", "i1": "signed char", "i2": "short", "i4": "int", "i8": "long long",
           "u1": "unsigned char", "u2": "unsigned short", "u4": "unsigned", "u8": "unsigned long long",
           "b1": "bool", "void": "void"}
MAX_DYNAMIC_SHARED = 232448  # GPUCONV_DYN_SMEM_MAX in cuda_sim.h
# One launch at a time: the scheduler's state is global in each module. A fork waits for the
# launch in flight (another thread's): a child forked mid-launch would find the lock taken for
# good and the fibers stopped inside that kernel. (Reentrant: a signal handler that forks while
# its own thread holds the lock between two bytecodes goes ahead; no launch is running then.)
_LOCK = threading.RLock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_LOCK.acquire, after_in_parent=_LOCK.release, after_in_child=_LOCK.release)


@dataclasses.dataclass(frozen=True)
class ArgType:
    code: str           # 'f4', 'v4f4', 'void' ...
    pointer: bool
    const: bool = False

    @property
    def dtype(self):
        if self.code.startswith("="):
            return np.dtype(self.code[1:])
        base = self.code[2:] if self.code.startswith("v") else self.code
        return None if self.code == "void" else np.dtype(_DTYPES[base])

    def __str__(self):
        base = _VEC_NAME.get(self.code) or _C_NAME.get(self.code, self.code.lstrip("="))
        return ("const " if self.const else "") + base + ("*" if self.pointer else "")


def parse_signature(text: str) -> tuple[ArgType, ...]:
    out = []
    for item in filter(None, text.split(",")):
        const = item.startswith("const ")
        item = item[6:] if const else item
        pointer = item.endswith("*")
        code = item.rstrip("*")
        if pointer and code.endswith("*"):
            code = "u8"  # a pointer to pointers: an array of 64-bit addresses
        out.append(ArgType(code, pointer, const))
    return tuple(out)


def _dims(value, what: str, limits: tuple[int, int, int]) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise TypeError(f"{what}={value!r}: expected an int or a tuple of 1 to 3 ints, as for a CuPy RawKernel")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    for axis, d, lim in zip("xyz", dims, limits):
        if not 1 <= d <= lim:
            raise ValueError(f"{what}={value!r}: {what}.{axis}={d} is outside 1..{lim}, the CUDA limit; "
                             f"a GPU would refuse this launch (invalid configuration)")
    return dims


class SimKernel:
    """One extern "C" kernel of a SimModule; call it as a CuPy RawKernel: fn(grid, block, args)."""

    def __init__(self, module: "SimModule", decl: KernelDecl, arg_types: tuple[ArgType, ...]):
        self.module, self.name, self.decl, self.arg_types = module, decl.name, decl, arg_types
        lib = module._lib
        self._entry = ctypes.cast(getattr(lib, "gpuconv_sim_entry__" + self.name), ctypes.c_void_p)
        self._cname = self.name.encode()

    def _param(self, i: int) -> str:
        p = self.decl.params[i] if len(self.decl.params) == len(self.arg_types) else None
        if p is None:
            return f"argument {i} (`{self.arg_types[i]}`)"
        return f"argument {i} '{p.name}' (`{p.declared}`)" if p.name else f"argument {i} (`{p.declared}`)"

    def _pack(self, i: int, t: ArgType, a):
        where = f"kernel {self.name}: {self._param(i)}"
        if t.pointer:
            if a is None:
                return ctypes.c_void_p(0)  # CuPy passes None as a null pointer
            if not isinstance(a, np.ndarray):
                if hasattr(a, "__cuda_array_interface__"):
                    raise TypeError(f"{where} got a GPU array; the host simulator runs on NumPy arrays: pass "
                                    "cupy.asnumpy(x)")
                raise TypeError(f"{where} expects a NumPy array (passed as a pointer), got {type(a).__name__}")
            if not a.flags.c_contiguous:
                raise TypeError(f"{where} got an array that is not C-contiguous (shape {a.shape}, strides "
                                f"{a.strides}); a kernel indexes flat memory: pass np.ascontiguousarray(x)")
            if t.dtype is not None and a.dtype != t.dtype:
                raise TypeError(f"{where} expects a {t.dtype} array for `{t}`, got a {a.dtype} array: "
                                f"pass x.astype(np.{t.dtype})")
            if t.code in _VEC_ALIGN and a.ctypes.data % _VEC_ALIGN[t.code]:
                raise TypeError(f"{where}: the array's data address {a.ctypes.data:#x} is not "
                                f"{_VEC_ALIGN[t.code]}-byte aligned, which `{t}` loads need (a GPU faults with "
                                "'misaligned address'): pass an aligned copy, np.ascontiguousarray(x) or x.copy()")
            if not t.const and not a.flags.writeable:
                raise TypeError(f"{where} is a non-const pointer but the array is read-only: declare the "
                                "parameter const or pass a writeable copy")
            return ctypes.c_void_p(a.ctypes.data)
        if t.code not in _CTYPES:
            raise TypeError(f"{where}: the simulator passes arrays and numeric scalars, not `{t}` by value")
        want = np.dtype(_DTYPES[t.code])
        if isinstance(a, np.ndarray):
            raise TypeError(f"{where} expects a scalar {want}, got an array of shape {a.shape}")
        if isinstance(a, np.generic):
            if a.dtype != want:
                raise TypeError(f"{where} expects np.{want}, got np.{a.dtype} ({a!r}); CuPy passes a NumPy scalar's "
                                f"bytes as they are, so the GPU would misread it: pass np.{want}(value)")
            return _CTYPES[t.code](a.item())
        # CuPy sends Python scalars as bool / int64 / float64 whatever the kernel declares.
        natural = {bool: "b1", int: "i8", float: "f8"}.get(type(a))
        if natural is None:
            raise TypeError(f"{where} expects a scalar np.{want}, got {type(a).__name__}")
        if natural != t.code and not (natural == "i8" and t.code == "u8" and a >= 0):
            raise TypeError(f"{where} got the Python {type(a).__name__} {a!r}, which CuPy passes as "
                            f"{np.dtype(_DTYPES[natural])} whatever the kernel declares, so the GPU would misread "
                            f"it: pass np.{want}({a!r})")
        if natural == "i8" and not -2**63 <= a < 2**64:
            raise OverflowError(f"{where}: {a} does not fit in 64 bits")
        return _CTYPES[t.code](a)

    def __call__(self, grid, block, args, shared_mem: int = 0, reverse: bool | None = None, stack_size=None):
        g = _dims(grid, "grid", (2**31 - 1, 65535, 65535))
        b = _dims(block, "block", (1024, 1024, 64))
        if b[0] * b[1] * b[2] > 1024:
            raise ValueError(f"block={block!r} has {b[0] * b[1] * b[2]} threads; CUDA allows at most 1024 per block")
        if not isinstance(shared_mem, (int, np.integer)) or not 0 <= shared_mem <= MAX_DYNAMIC_SHARED:
            raise ValueError(f"shared_mem={shared_mem!r}: expected bytes of dynamic shared memory in "
                             f"0..{MAX_DYNAMIC_SHARED} (227 KiB, the largest a GPU grants)")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"kernel {self.name}: args must be a tuple of arrays and scalars, got {type(args).__name__}")
        if len(args) != len(self.arg_types):
            sig = ", ".join(str(t) for t in self.arg_types)
            raise TypeError(f"kernel {self.name}({sig}) takes {len(self.arg_types)} arguments, got {len(args)}")
        holders = [self._pack(i, t, a) for i, (t, a) in enumerate(zip(self.arg_types, args))]
        ptrs = (ctypes.c_void_p * max(1, len(holders)))(*[ctypes.addressof(h) for h in holders])
        rev = schedule_reversed() if reverse is None else bool(reverse)
        stack = int(stack_size or self.module.stack_size)
        lib = self.module._lib
        with _LOCK:
            status = lib.gpuconv_sim_launch(self._entry, ptrs, self._cname, (ctypes.c_uint * 3)(*g),
                                            (ctypes.c_uint * 3)(*b), ctypes.c_size_t(int(shared_mem)), int(rev),
                                            ctypes.c_size_t(stack))
            message = lib.gpuconv_sim_error().decode(errors="replace")
        if status == 1:
            raise BarrierDivergence(message)
        if status:
            raise SimulatorError(message)

    def __repr__(self):
        return f"<SimKernel {self.name}({', '.join(str(t) for t in self.arg_types)})>"


def schedule_reversed() -> bool:
    """$GPUCONV_SIM_SCHEDULE=reverse runs every launch's threads in reversed order."""
    value = os.environ.get("GPUCONV_SIM_SCHEDULE", "forward").strip().lower()
    if value not in ("forward", "reverse"):
        raise ValueError(f"GPUCONV_SIM_SCHEDULE={value!r}: expected 'forward' or 'reverse'")
    return value == "reverse"


class SimModule:
    """A compiled translation unit; get_function(name) returns a SimKernel."""

    def __init__(self, path, name: str, kernels: dict[str, KernelDecl], sanitize: bool, cached: bool):
        self.path, self.name, self.kernels, self.sanitize, self.cached = path, name, kernels, sanitize, cached
        self.stack_size = default_stack_size(sanitize)
        self._lib = ctypes.CDLL(str(path))
        self._lib.gpuconv_sim_launch.restype = ctypes.c_int
        self._lib.gpuconv_sim_error.restype = ctypes.c_char_p
        self._lib.gpuconv_sim_static_shared_bytes.restype = ctypes.c_size_t
        self._functions: dict[str, SimKernel] = {}

    @property
    def static_shared_bytes(self) -> int:
        """Bytes of __shared__ storage of all the module's kernels together."""
        return int(self._lib.gpuconv_sim_static_shared_bytes())

    def get_function(self, name: str) -> SimKernel:
        if name in self._functions:
            return self._functions[name]
        decl = self.kernels.get(name)
        if decl is None or not decl.extern_c:
            found = sorted(k for k, d in self.kernels.items() if d.extern_c)
            why = ("it is not extern \"C\" (a C++ name is mangled): declare it extern \"C\" __global__"
                   if decl else "no such __global__ function")
            raise AttributeError(f"module {self.name!r} has no kernel {name!r} ({why}); its extern \"C\" kernels: "
                                 f"{', '.join(found) or 'none'}")
        # The signature is written into a static buffer at its first call (cuda_sim.h), which two
        # threads must not do at once: one would read the other's half-written text.
        with _LOCK:
            if name not in self._functions:
                sig = getattr(self._lib, "gpuconv_sim_sig__" + name)
                sig.restype = ctypes.c_char_p
                self._functions[name] = SimKernel(self, decl, parse_signature(sig().decode()))
        return self._functions[name]

    def __repr__(self):
        return f"<SimModule {self.name!r} kernels={sorted(self.kernels)} sanitize={self.sanitize}>"


def default_stack_size(sanitize: bool) -> int:
    """$GPUCONV_SIM_STACK (bytes, or with a k/m suffix), else 64 KiB (256 KiB for ASan's larger frames)."""
    text = os.environ.get("GPUCONV_SIM_STACK", "").strip().lower()
    if not text:
        return (256 if sanitize else 64) * 1024
    mult = {"k": 1024, "m": 1024 * 1024}.get(text[-1], 1)
    try:
        value = int(text.rstrip("km")) * mult
    except ValueError:
        raise ValueError(f"GPUCONV_SIM_STACK={text!r}: expected bytes such as 65536 or 64k") from None
    if value < 16 * 1024:
        raise ValueError(f"GPUCONV_SIM_STACK={text!r}: a fiber stack needs at least 16k")
    return value

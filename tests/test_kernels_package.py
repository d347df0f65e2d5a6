"""gpuconv.kernels is a package of modules that behaves as one module: every name of every module is
the package's, and an assignment through the package (the tests' monkeypatches) reaches the code
of every module, not only the package's copy of the name."""
from __future__ import annotations

import ast
import pathlib
import pickle

import ml_dtypes
import numpy as np
import pytest

from conftest import REPO
from gpuconv import kernels

PACKAGE = pathlib.Path(kernels.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("_*.py") if p.stem != "__init__")


def _module(name):
    return getattr(kernels, name)


def test_the_package_holds_its_modules():
    assert PACKAGE == REPO / "gpuconv" / "kernels" and len(MODULES) >= 5
    assert {m.__name__ for m in kernels._MODULES} == {f"gpuconv.kernels.{m}" for m in MODULES}


@pytest.mark.parametrize("name", MODULES)
def test_no_module_copies_a_name_of_another(name):
    """``from ._nvrtc import nvrtc_compile`` would bind a copy that an assignment through the
    package never reaches: a module imports its siblings as modules and reads their names there."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    copies = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        target = ("." * node.level) + (node.module or "")
        if target == ".":
            copies += [a.name for a in node.names if a.name not in MODULES]
        elif target.startswith(".") and target.lstrip(".") and node.level == 1:
            copies += [f"{target}.{a.name}" for a in node.names]
        elif target in ("..kernels", "gpuconv.kernels") or target.startswith(("..kernels.", "gpuconv.kernels.")):
            copies += [f"{target}.{a.name}" for a in node.names]
    assert not copies, f"gpuconv/kernels/{name}.py copies {copies}: import the module and read the name through it"


@pytest.mark.parametrize("name", MODULES)
def test_every_name_of_every_module_is_the_packages(name):
    module = _module(name)
    names = [n for n in vars(module) if not (n.startswith("__") and n.endswith("__"))]
    assert names
    for n in names:
        assert getattr(kernels, n) is getattr(module, n), f"kernels.{n} is not {module.__name__}.{n}"
    assert set(names) <= set(dir(kernels))


def _rebound(name) -> set:
    """The globals that functions of module ``name`` rebind (``global x``)."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    return {g for node in ast.walk(tree) if isinstance(node, ast.Global) for g in node.names}


@pytest.mark.parametrize("name", MODULES)
def test_a_global_its_module_rebinds_reads_through_the_package(name, monkeypatch):
    """A package copy of a global that its module's code rebinds (a warned-once flag, a lock made
    anew after a fork) would keep the first value: the package reads the module's."""
    module = _module(name)
    for n in _rebound(name):
        new = object()
        monkeypatch.setattr(module, n, new)  # as the module's own ``global n; n = ...`` does
        assert getattr(kernels, n) is new, f"kernels.{n} kept a stale copy of {module.__name__}.{n}"
        assert n in dir(kernels)


def test_a_private_name_patched_through_the_package_reaches_another_modules_code(monkeypatch):
    """resolve (one module) asks tensor_cores_for (another), which asks _compute_capability: a GPU
    of compute capability 7.5 runs bfloat16 on the CUDA-core tiles, one of 9.0 on tensor cores."""
    assert kernels.resolve.__module__ != kernels._compute_capability.__module__
    monkeypatch.delenv("GPUCONV_KERNEL_VARIANTS", raising=False)
    kernels._env_choices.cache_clear()
    monkeypatch.setattr(kernels, "_every_gpu_has_tensor_cores", lambda min_cc: False)
    answers = {}
    with kernels.autotuning(False):
        for cc in (75, 90):
            monkeypatch.setattr(kernels, "_compute_capability", lambda device, cc=cc: cc)
            answers[cc] = kernels.resolve("conv2d_forward", ml_dtypes.bfloat16, False, 256, "cuda",
                                          launch=lambda: (0, None))
    kernels._env_choices.cache_clear()
    assert answers == {75: "v3", 90: "tc128"}


def test_a_public_name_patched_through_the_package_reaches_another_modules_code(monkeypatch):
    """tune_candidates (autotuning) asks tensor_cores_available and wgmma_available (capabilities)."""
    assert kernels.tune_candidates.__module__ != kernels.tensor_cores_available.__module__
    monkeypatch.setattr(kernels, "wgmma_available", lambda target, device=None: False)
    found = {}
    for has in (False, True):
        monkeypatch.setattr(kernels, "tensor_cores_available", lambda *a, has=has: has)
        found[has] = kernels.tune_candidates("conv2d_forward", ml_dtypes.bfloat16, False, "cuda", 0, 256)
    assert found == {False: ("v2", "v3"), True: ("tc", "tc128", "tc128w")}


def test_undoing_a_patch_restores_the_package_and_the_module():
    capability, registry, nvrtc = kernels._capability, kernels._registry, kernels._nvrtc
    original, cache, warned = kernels._compute_capability, kernels._cache, kernels._cache_warned
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "_compute_capability", lambda device: 0)
        mp.setattr(kernels, "_cache", {})
        mp.setattr(kernels, "_cache_warned", not warned)  # a global its module rebinds
        mp.setattr(kernels, "open", lambda *a, **k: None, raising=False)  # a builtin, shadowed for every module
        assert capability._compute_capability is kernels._compute_capability is not original
        assert registry._cache is kernels._cache is not cache
        assert kernels._cuda._cache_warned is kernels._cache_warned is (not warned)
        assert nvrtc.open is kernels.open and "open" in vars(kernels._cuda)
    assert capability._compute_capability is kernels._compute_capability is original
    assert registry._cache is kernels._cache is cache
    assert kernels._cuda._cache_warned is kernels._cache_warned is warned
    assert "open" not in vars(kernels) and not any("open" in vars(m) for m in kernels._MODULES)


def test_a_new_name_set_on_the_package_stays_there():
    kernels._not_a_kernels_name = 1
    try:
        assert not any("_not_a_kernels_name" in vars(m) for m in kernels._MODULES)
    finally:
        del kernels._not_a_kernels_name
    with pytest.raises(AttributeError, match="no attribute '_not_a_kernels_name'"):
        kernels._not_a_kernels_name  # noqa: B018


def test_the_checkout_kernels_are_found_from_the_package():
    assert kernels._shipped_kernel_dir() == REPO / "kernels"


def test_records_and_functions_pickle_by_their_names():
    rec = kernels.Launch("relu_forward", (1, 1, 1), (256, 1, 1), "sim", "float")
    assert pickle.loads(pickle.dumps(rec)) == rec
    assert pickle.loads(pickle.dumps(kernels.launch)) is kernels.launch
    err = pickle.loads(pickle.dumps(kernels.KernelCompileError("kernels/x.cu(1): error")))
    assert type(err) is kernels.KernelCompileError and str(err) == "kernels/x.cu(1): error"
    assert pickle.loads(pickle.dumps(kernels._DTYPES[np.dtype(np.float32)])) == kernels._DTYPES[np.dtype(np.float32)]

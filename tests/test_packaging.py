"""The wheel carries the kernels: build it, install it away from the checkout, and compile and
run one kernel from the installed copy on the host simulator."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO


def _declared_packages():
    text = (REPO / "pyproject.toml").read_text()
    line = next(l for l in text.splitlines() if l.startswith("packages = ["))
    return set(re.findall(r'"([\w.]+)"', line))


def test_the_wheel_lists_every_package_in_the_tree():
    """A package left out of pyproject's list is missing from every wheel and sdist (an installed
    gpuconv then fails to import it), while the checkout, where the tests run, has it."""
    tree = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "gpuconv").rglob("__init__.py")}
    assert tree | {"gpuconv.kernels_src"} == _declared_packages()


@pytest.mark.slow
def test_installed_wheel_finds_and_runs_its_kernels(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(REPO)], check=True)
    (wheel,) = wheels.glob("gpuconv-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(wheel)], check=True)
    assert (site / "gpuconv" / "kernels_src" / "conv2d.cu").is_file()

    script = textwrap.dedent("""
        import importlib, numpy as np, gpuconv, gpuconv.kernels as K
        from gpuconv import ops
        for name in PACKAGES:
            assert importlib.import_module(name).__file__.startswith(SITE), name
        assert gpuconv.__file__.startswith(SITE), gpuconv.__file__
        from importlib.metadata import version
        assert version('gpuconv') == gpuconv.__version__, (version('gpuconv'), gpuconv.__version__)
        assert str(K.kernel_dir()).startswith(SITE), K.kernel_dir()
        x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
        with gpuconv.default_device('sim'):
            y, _ = ops.relu_forward(x)
        assert np.array_equal(y, np.maximum(x, 0))
        print('ok', K.kernel_dir())
    """).replace("SITE", repr(str(site))).replace("PACKAGES", repr(sorted(_declared_packages() - {"gpuconv.kernels_src"})))
    env = dict(os.environ, PYTHONPATH=str(site), GPUCONV_SIM_CACHE=str(tmp_path / "simcache"))
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_the_checkout_tracks_no_virtual_environment():
    """A `.venv` that is a symbolic link (a clone sharing another checkout's environment) is no
    directory, so `.venv/` did not ignore it: `git add -A` committed the link, and checking that
    commit out over a real environment replaced it (git overwrites ignored files) with a link to
    itself. The link is untracked and `.venv` is ignored whether directory or link."""
    git = ["git", "-C", str(REPO)]
    if subprocess.run(git + ["rev-parse", "--git-dir"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    tracked = subprocess.run(git + ["ls-files", "--", ".venv"], capture_output=True, text=True,
                             check=True).stdout.split()
    assert tracked == []
    # --no-index: ignored by the patterns whatever the index holds; a name with no trailing slash is
    # matched as a file or link.
    ignored = subprocess.run(git + ["check-ignore", "--no-index", "-q", ".venv"])
    assert ignored.returncode == 0, ".gitignore must ignore .venv as a link, not only as a directory"


def test_every_cupy_extra_brings_nvrtc_and_the_cuda_runtime_headers():
    """CuPy 14's wheels leave NVRTC and the CUDA headers to a toolkit, and CuPy compiles each of its
    own kernels (an elementwise operation, a cast) against cuda_runtime.h, raising "Failed to find
    CUDA headers" where none is found: an extra that installs a CuPy for a machine with only the
    driver brings NVRTC and the runtime's headers of the same CUDA major, from PyPI."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    checked = 0
    for name, reqs in extras.items():
        cupy = [r for r in reqs if r.startswith("cupy-cuda")]
        if not cupy:
            continue
        major = re.match(r"cupy-cuda(\d+)x", cupy[0]).group(1)
        suffix = "-cu12" if major == "12" else ""  # (CUDA 13's wheels dropped the suffix)
        names = {re.split(r"[<>=!~\[; ]", r)[0] for r in reqs}
        assert {f"nvidia-cuda-nvrtc{suffix}", f"nvidia-cuda-runtime{suffix}"} <= names, (name, reqs)
        # CuPy holds ml_dtypes' bfloat16 arrays only with NumPy >= 2.1.2 (cupy/_util.pyx): bf16 on the GPU
        assert "numpy>=2.1.2" in reqs, (name, reqs)
        checked += 1
    assert checked == 3  # cuda12, cuda13, nvrtc

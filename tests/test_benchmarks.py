"""The benchmark scripts on the host simulator: each validates (and can fail to), writes its record
with the expected fields, and says clearly (exit status 2) when asked for a GPU that is not there.

The GPU numbers themselves come from ``benchmarks/run_gpu.sh`` on a lent GPU; here the same code
paths run at tiny sizes with ``--device sim --tiny``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import time
from collections import Counter

import numpy as np
import pytest

from conftest import SUBSET
from gpuconv import backend as B
from gpuconv import hostsim

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SCRIPTS = ["bench_ops", "bench_step", "bench_epoch"]
no_gpu = pytest.mark.skipif(B.cuda_available(), reason="a GPU is present: the no-GPU message is not shown")


def run_script(name, *args, env=None, timeout=120):
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)


def load(name):
    """A benchmark script as a module (its main() callable in-process)."""
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ENV_FIELDS = {"device", "device_kind", "date", "gpuconv", "cupy", "cuda_runtime", "cuda_driver", "torch", "cudnn",
              "python", "numpy"}


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.slow
def test_sim_tiny_run_validates_and_saves_its_record(name, tmp_path):
    """One tiny run per script (each costs seconds on the simulator) checks both outputs: the table on
    stdout, and the record --save writes (common.finish's json.dumps, as --json's, which the
    profile_step and bench_airbench runs below print)."""
    proc = run_script(name, "--device", "sim", "--tiny", "--save", env={"GPUCONV_BENCH_RESULTS": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "host simulator" in proc.stdout and "validation only" in proc.stdout
    saved = list(tmp_path.glob("*.json"))
    assert len(saved) == 1 and re.fullmatch(rf"\d{{4}}-\d\d-\d\d-\d{{4}}-host-simulator-gpuconv-hostsim-{name}\.json",
                                            saved[0].name)
    rec = json.loads(saved[0].read_text())
    assert rec["benchmark"] == name and rec["tiny"] is True and rec["timed"] is False
    assert ENV_FIELDS <= set(rec["environment"]) and rec["environment"]["device_kind"] == "sim"
    assert rec["validation"]["passed"] is True and len(rec["validation"]["checks"]) >= 3
    assert all(c["ok"] for c in rec["validation"]["checks"])
    results = rec["results"]
    if name == "bench_ops":
        ops = {r["op"] for r in results["memory"]}
        assert {"relu forward", "relu backward", "max_pool2 forward", "max_pool2 backward", "max_pool4 forward"} <= ops
        assert all({"bytes", "ms", "gbs", "copy_gbs", "vs_copy", "torch_ms", "host_ms", "launch_bound"} <= set(r)
                   for r in results["memory"])
        assert all(r["ms"] is None for r in results["memory"])  # no timing claims on the simulator
        assert any("conv2d" in c["name"] for c in rec["validation"]["checks"])
    elif name == "bench_step":
        assert [(r["model"], r["precision"]) for r in results] == [
            ("fast_net", "fp32"), ("fast_net", "bf16"), ("three_layer_convnet", "fp32"), ("three_layer_convnet", "bf16")]
        assert any("bf16 loss vs float64 NumPy" in c["name"] for c in rec["validation"]["checks"])
        graph = [c for c in rec["validation"]["checks"] if "cuda-graph steps" in c["name"]]
        assert len(graph) == 4 and all(c["ok"] and c["error"] == 0.0 for c in graph)
        assert all(r["graph_ms"] is None for r in results)  # no timing claims on the simulator
        for r in results:
            assert r["host_transfers"] == 0 and r["steps"] == 5 and np.isfinite(r["final_loss"])
            assert r["sync_in_step"] is None
            assert {"images_per_s", "torch_images_per_s", "speed_vs_torch", "pool_stable"} <= set(r)
    else:
        assert results["batches_per_epoch"] == 3 and results["host_transfers"] == 0
        assert {"epoch_s", "torch_epoch_s", "speed_vs_torch", "loader_fused_s", "fusion_speedup"} <= set(results)
        names = " ".join(c["name"] for c in rec["validation"]["checks"])
        assert "fused batch == NumPy reference pipeline" in names and "fast_net gradients" in names


@no_gpu
@pytest.mark.parametrize("name", SCRIPTS + ["sanitize_gpu", "bench_models"])
def test_cuda_without_a_gpu_exits_2_naming_the_simulator_command(name):
    proc = run_script(name)
    assert proc.returncode == 2
    assert "no usable GPU" in proc.stderr and f"python benchmarks/{name}.py --device sim" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
def test_profile_step_on_the_simulator_wraps_every_layer_and_changes_nothing():
    proc = run_script("profile_step", "--device", "sim", "--tiny", "--json", "--models", "fast_net", "airbench94",
                      "--host-top", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout)
    assert rec["validation"]["passed"] and rec["timed"] is False
    names = [c["name"] for c in rec["validation"]["checks"]]
    assert "fast_net bf16: the profiled step's loss equals an unprofiled one" in names
    assert "airbench94 bf16: the profiled step's loss equals an unprofiled one" in names
    kinds = {(r["model"], r["precision"], r["kind"]): r for r in rec["results"]}
    for prec in ("fp32", "bf16"):
        assert kinds[("fast_net", prec, "Conv2d")]["layers"] == 8
        assert kinds[("fast_net", prec, "BatchNorm2d")]["layers"] == 8
        assert kinds[("airbench94", prec, "Conv2d")]["layers"] == 7  # the whitening conv and 3 blocks of 2
        assert kinds[("airbench94", prec, "GELU")]["layers"] == 1  # the whitening's; the blocks' are fused
        assert kinds[("airbench94", prec, "BatchNorm2d")]["layers"] == 6
        assert ("fast_net", prec, "(rest of the step)") in kinds
    # the host's costliest functions per step: the simulator's kernel calls lead on 'sim'
    top = rec["host_functions"]["airbench94 bf16"]
    assert len(top) == 5 and all(t["calls_per_step"] > 0 and t["cum_ms_per_step"] >= t["own_ms_per_step"] >= 0
                                 for t in top)
    assert [t["own_ms_per_step"] for t in top] == sorted((t["own_ms_per_step"] for t in top), reverse=True)
    assert all(r["forward_ms"] is None and r["backward_ms"] is None for r in rec["results"])
    # and per leaf layer, in the order they ran: the kinds' rows are their sums
    layers = rec["per_layer"]["airbench94 bf16"]
    assert [r["layer"] for r in layers][:4] == ["whiten", "gelu0", "block1.conv1", "block1.pool"]
    assert Counter(r["kind"] for r in layers) == {k: r["layers"] for (m, p, k), r in kinds.items()
                                                  if m == "airbench94" and p == "bf16" and r["layers"]}


@pytest.mark.slow
def test_profile_step_stub_kernels_measures_the_host_work_alone():
    """--stub-kernels: after the validated steps, the step's host work with the simulator's
    kernels made no-ops: calls and ms per step, and the profile holds no simulator execution."""
    proc = run_script("profile_step", "--device", "sim", "--tiny", "--json", "--models", "airbench94",
                      "--precisions", "bf16", "--batch", "8", "--repeat", "1", "--stub-kernels", "--host-top", "400")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout)
    assert rec["validation"]["passed"]
    host = rec["host_stubbed"]["airbench94 bf16"]
    assert host["calls_per_step"] > host["python_calls_per_step"] > 0 and host["ms_per_step"] > 0
    assert host["cpu_ms_per_step"] > 0
    functions = [t["function"] for t in rec["host_functions"]["airbench94 bf16"]]
    assert any(f.startswith("_launching.py") and f.endswith("(launch)") for f in functions)
    assert not any(f.startswith("_launch.py") and "_pack" in f for f in functions)  # no argument was packed
    proc = run_script("profile_step", "--stub-kernels")
    assert proc.returncode == 2 and "--stub-kernels stubs the host simulator's kernels" in proc.stderr


def test_profile_step_table_names_the_costliest_layers(capsys):
    """With GPU times (here made up), the table lists each run's costliest layers, forward plus
    backward, most first."""
    prof = load("profile_step")
    rec = {"environment": {"device": "a GPU"}, "results": [], "step_ms": {}, "host_submit_ms": {},
           "host_functions": {},
           "per_layer": {"m bf16": [{"layer": f"l{i}", "kind": "Conv2d", "forward_ms": float(i), "backward_ms": 1.0}
                                    for i in range(prof.PER_LAYER_TOP + 3)]}}
    prof.table(rec)
    out = capsys.readouterr().out.splitlines()
    start = out.index("m bf16: the costliest layers (ms per step, forward + backward)")
    shown = [line.split()[0] for line in out[start + 2:start + 2 + prof.PER_LAYER_TOP]]
    assert shown == [f"l{i}" for i in range(prof.PER_LAYER_TOP + 2, 2, -1)]


def test_sim_needs_tiny():
    proc = run_script("bench_ops", "--device", "sim")
    assert proc.returncode == 2 and "Add --tiny" in proc.stderr


# ----------------------------------------------------------------------------- the checks can fail
def test_ops_validation_failure_stops_before_timing(monkeypatch, capsys):
    bench = load("bench_ops")
    real = bench.R._relu_forward_reference
    monkeypatch.setattr(bench.R, "_relu_forward_reference", lambda x: (real(x)[0] + 1, real(x)[1]))
    assert bench.main(["--device", "sim", "--tiny", "--skip-conv"]) == 1
    err = capsys.readouterr().err
    assert "validation failed; nothing timed" in err and "relu forward (1, 32, 32)" in err


def test_grouped_conv_bench_validates_every_layer_and_direction_and_can_fail(tmp_path, monkeypatch, capsys):
    """bench_conv2d_grouped on the simulator: every tiny layer, precision and direction checked
    against the float64 reference, the record saved; a wrong kernel result stops it before timing."""
    bench = load("bench_conv2d_grouped")
    monkeypatch.setenv("GPUCONV_BENCH_RESULTS", str(tmp_path))
    assert bench.main(["--device", "sim", "--tiny", "--save"]) == 0
    rec = json.loads(next(tmp_path.glob("*bench_conv2d_grouped.json")).read_text())
    checks = rec["validation"]["checks"]
    assert rec["validation"]["passed"] and len(checks) == len(bench.TINY_LAYERS) * len(bench.PRECISIONS) * 3
    assert {(r["layer"], r["precision"], r["direction"]) for r in rec["results"]} == {
        (layer[0], p, d) for layer in bench.TINY_LAYERS for p in bench.PRECISIONS for d in bench.DIRECTIONS}
    assert all({"ms", "gbs", "tflops", "torch_ms", "vs_cudnn", "bytes", "flop"} <= set(r) for r in rec["results"])
    assert {r["groups"] for r in rec["results"]} >= {1, 4, 8} and {r["dilation"] for r in rec["results"]} == {1, 2}
    real = bench.calls
    monkeypatch.setattr(bench, "calls", lambda *a: {**real(*a), "backward_weight": lambda: real(*a)["forward"]()})
    assert bench.main(["--device", "sim", "--tiny"]) == 1
    assert "validation failed; nothing timed" in capsys.readouterr().err


def test_step_readback_inside_a_step_fails_the_transfer_check(monkeypatch, capsys):
    import gpuconv
    bench = load("bench_step")
    real = bench.make_step

    def leaky(*a):
        step = real(*a)
        return lambda x, y: (gpuconv.item(loss := step(x, y)), loss)[1]  # a float(loss) per step: a host sync
    monkeypatch.setattr(bench, "make_step", leaky)
    assert bench.main(["--device", "sim", "--tiny", "--json", "--models", "three_layer_convnet",
                       "--precisions", "fp32"]) == 1
    out = capsys.readouterr()
    rec = json.loads(out.out)
    failed = [c for c in rec["validation"]["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["three_layer_convnet fp32: no host transfer during 5 steps",
                                           "three_layer_convnet fp32: no host-device synchronization in 2 guarded steps"]
    assert failed[0]["error"] == 5 and "training step 1 of 2 guarded copied between host and device on 'sim'" in failed[1]["detail"]
    assert "no host transfer" in out.err


def test_epoch_validation_catches_a_wrong_fused_batch(monkeypatch, capsys):
    bench = load("bench_epoch")
    from gpuconv.data import loader as loader_mod
    real = loader_mod.augment_batch_kernel
    monkeypatch.setattr(loader_mod, "augment_batch_kernel", lambda *a, **k: -real(*a, **k))
    assert bench.main(["--device", "sim", "--tiny"]) == 1
    err = capsys.readouterr().err
    assert "fused batch == array path batch" in err and "fused batch == NumPy reference pipeline" in err


# ----------------------------------------------------------------------------- GPU driver scripts
def declared_kernels():
    declared = set()
    for cu in (REPO / "kernels").glob("*.cu"):
        declared |= set(re.findall(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(',
                                   cu.read_text()))
    return declared


def test_sanitize_driver_expects_every_kernel_in_the_kernel_files():
    declared, sanitize = declared_kernels(), load("sanitize_gpu")
    assert declared == sanitize.EXPECTED, f"not in sanitize_gpu.py: {sorted(declared - sanitize.EXPECTED)}"


# test_sanitizer runs this same driver, twice, under ASan/UBSan, with the same checks (exit status 0:
# every kernel matched the NumPy reference; RAN: every entry point): a third, plain run is only for
# a machine without the sanitizer runtimes.
@pytest.mark.skipif(hostsim.sanitizers_available(), reason="test_sanitizer runs sanitize_gpu.py on 'sim'")
def test_sanitize_driver_launches_every_kernel_in_the_kernel_files():
    declared = declared_kernels()
    proc = run_script("sanitize_gpu", "--device", "sim")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = set(proc.stdout.split("RAN ", 1)[1].split()[0].split(","))
    assert ran == declared


def test_common_table_and_checks(capsys):
    common = load("common")
    common.print_table([{"a": "x", "b": 1.23456}, {"a": "longer", "b": None}], [("a", "name", ""), ("b", "val", ".2f")])
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["name     val", "x       1.23", "longer     -"]
    checks = common.Checks()
    assert not checks.passed  # no check at all is not a pass
    checks.exact("same", np.arange(3), np.arange(3))
    checks.close("near", np.ones(3) * 1.0001, np.ones(3), 1e-3)
    assert checks.passed
    checks.exact("dtype", np.arange(3, dtype=np.int32), np.arange(3))
    assert not checks.passed and checks.failures()[0].startswith("dtype:")



def test_the_conv_layer_sets_are_the_networks_own():
    """bench_conv2d's layer sets come from the models: fast_net's 3x3 convs, and airbench94's (its
    2x2 whitening conv aside) at the sizes the network runs them, in forward order."""
    bench = load("bench_conv2d")
    assert bench.airbench94_layers() == [(24, 64, 31), (64, 64, 15), (64, 256, 15), (256, 256, 7), (256, 256, 3)]
    assert bench.airbench96_layers() == [(24, 128, 31), (128, 128, 15), (128, 384, 15), (384, 384, 7), (384, 512, 7),
                                         (512, 512, 3)]
    assert set(bench.CIFAR_LAYERS) <= set(bench.fast_net_layers())


def test_cudnn_baseline_runs_every_direction_in_the_precisions_layout():
    """tf32 and bf16 are timed channels_last on both sides: PyTorch's weight too (as a
    channels_last model holds it), else cuDNN's data gradient, whose input is a shape alone, runs
    in NCHW from the NCHW weight; fp32 stays NCHW."""
    torch = pytest.importorskip("torch")
    bench = load("bench_conv2d")
    for prec in ("fp32", "tf32", "bf16"):
        x, w, b, dy = bench.on_device(bench.make_layer(2, 4, 8, 5, prec=prec), "sim", prec)
        for direction, call in bench.torch_calls(torch, x, w, b, dy, prec).items():
            out = call()
            cl = out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
            assert cl == bench.PRECISIONS[prec][2], (prec, direction, out.stride())


def test_ops_conv_rows_time_the_variants_auto_runs(monkeypatch):
    """bench_ops' conv rows and per-layer sums are the concrete variants "auto" runs at each layer
    (the channel rule), one row per layer and direction: "auto" itself is no variant to time."""
    bench = load("bench_ops")
    BC = bench.bench_conv2d

    def fake_benchmark(batch, warmup, repeat, use_torch=True, layers=(), variants=None, **kw):
        return [{"precision": "fp32", "layer": BC.layer_label(*layer), "direction": d, "variant": v, "ms": 1.0,
                 "torch_ms": 2.0} for layer in layers for d, f in BC.DIRECTIONS.items()
                for v in BC.family_variants(f, variants, "fp32", "sim")]

    monkeypatch.setattr(BC, "benchmark", fake_benchmark)
    layers = [(3, 64, 32), (128, 256, 16)]
    args = type("Args", (), {"device": "cuda", "warmup": 1, "repeat": 1})
    rows = bench.conv_rows(args, layers, 8, None)
    assert [(r["layer"], r["direction"], r["variant"]) for r in rows] == [
        (BC.layer_label(c, k, h), d, BC.default_variant(f, "fp32", c, k))
        for c, k, h in layers for d, f in BC.DIRECTIONS.items()]
    assert [(s["ms"], s["speed_vs_torch"]) for s in bench.conv_layer_summary(rows)] == [(3.0, 2.0)] * 2


def test_record_commit_says_when_tracked_files_differ_from_it(tmp_path, monkeypatch):
    """A record names the commit it ran, "-dirty" added when tracked files were edited after it
    (the device runs the working tree as it is); untracked files (new records) do not count."""
    common = load("common")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=repo,  # noqa: E731
                                    check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    (repo / "k.cu").write_text("a\n")
    git("add", "k.cu")
    git("commit", "-q", "-m", "k")
    monkeypatch.setattr(common, "REPO", repo)
    head = git("rev-parse", "--short", "HEAD")
    (repo / "record.json").write_text("{}")
    assert common._git_commit() == head
    (repo / "k.cu").write_text("b\n")
    assert common._git_commit() == head + "-dirty"
    monkeypatch.setattr(common, "REPO", tmp_path)  # no checkout
    assert common._git_commit() is None


def test_conv_validation_splits_the_weight_gradient_as_the_timed_batch_does(monkeypatch):
    """bench_conv2d validates on 4-image slices and times batch 512: the weight gradient's
    reduction (N*OH*OW positions) must split in validation too, or its split path is timed
    unchecked; the launchers' own minimum comes back afterwards."""
    bench = load("bench_conv2d")
    LC, seen = bench.LC, []
    plan = LC._weight_splits
    monkeypatch.setattr(LC, "_weight_splits", lambda *a: seen.append(plan(*a)[0]) or plan(*a))
    chunk = LC.MIN_SPLIT_CHUNK
    assert bench.validate([(8, 16, 4)], 4, "sim", ("v2",), ("fp32",)) == []
    assert max(seen) > 1 and LC.MIN_SPLIT_CHUNK == chunk


def test_conv_bench_checks_float16_on_tensor_cores_and_keeps_it_out_of_the_default_run(monkeypatch):
    """--precisions fp16 (a T4's one tensor-core type) validates the tensor-core tiles in float16
    against the reference, where a wrong result fails; the default run stays fp32, tf32, bf16."""
    bench = load("bench_conv2d")
    assert bench.validate([(8, 16, 4)], 4, "sim", ("tc",), ("fp16",)) == []
    run = bench.run_direction
    monkeypatch.setattr(bench, "run_direction", lambda *a, **k: run(*a, **k) * np.float16(1.01))
    failures = bench.validate([(8, 16, 4)], 4, "sim", ("tc",), ("fp16",))
    assert len(failures) == 3 and all(f.key[0] == "fp16" and f.key[2] == "tc" for f in failures), failures
    assert bench.DEFAULT_PRECISIONS == ("fp32", "tf32", "bf16") and "fp16" in bench.PRECISIONS


def test_cuda_time_keeps_a_host_stall_to_one_group(monkeypatch):
    """A 150 ms stall in one of 20 calls of a 1 ms kernel: the median of the timing groups stays
    1 ms (one mean over all calls said 8.5 ms), and the spread names the noisy row."""
    common = load("common")
    clock = {"t": 0.0, "calls": 0}

    class FakeEvent:
        def record(self):
            self.t = clock["t"]

        def synchronize(self):
            pass

    class Cuda:
        Event = FakeEvent

        @staticmethod
        def get_elapsed_time(a, b):
            return b.t - a.t

    class FakeCupy:
        cuda = Cuda

    monkeypatch.setattr(common.B, "cupy_module", lambda: FakeCupy)

    def kernel():
        clock["calls"] += 1
        clock["t"] += 1.0 + (150.0 if clock["calls"] == 3 + 11 else 0.0)  # 3 warm-ups, then the 11th call

    assert common.cuda_time(kernel, 3, 20) == pytest.approx(1.0)
    assert clock["calls"] == 23
    assert common.cuda_time.last_spread == pytest.approx(151 / 4 / 1.0 + 3 / 4)
    clock["calls"] = -1000  # no stall: every group equal
    assert common.cuda_time(kernel, 0, 7, groups=3) == pytest.approx(1.0)
    assert common.cuda_time.last_spread == pytest.approx(1.0)

def test_step_times_gpuconv_with_the_statistic_of_its_pytorch_side(monkeypatch):
    """bench_step's ratio divides two times of one kind: gpuconv's eager steps go through
    common.cuda_time (the median of five groups) as PyTorch's do, so a host stall in one group
    cannot sink only gpuconv's side; the steps and the pool check at step 3 still all run."""
    import gpuconv
    bench = load("bench_step")
    timed = []

    def cuda_time(fn, warmup, repeat, groups=5):
        for _ in range(warmup + repeat):
            fn()
        timed.append(repeat)
        return 1.25

    monkeypatch.setattr(bench.common, "cuda_time", cuda_time)
    monkeypatch.setattr(bench.common, "to_dev", lambda a, args: np.asarray(a))
    monkeypatch.setattr(bench, "pool_usage", lambda args: {"used_bytes": 1, "total_bytes": 1})
    monkeypatch.setattr(bench, "guarded_steps", lambda step, n: None)
    args = bench.common.parse(bench.common.add_arguments(__import__("argparse").ArgumentParser()),
                              ["--warmup", "1", "--repeat", "4"])
    factory, shape = bench.MODELS["fast_net"][1]
    x, y = bench.batch_data(shape, 2)
    with gpuconv.default_device("cpu"):
        res = bench.run_gpuconv(factory, x, y, args)
    assert res["ms"] == 1.25 and timed == [4] and res["steps"] == 5
    assert res["pool_stable"] is True and np.isfinite(res["final_loss"])


def battery_environ():
    """This process's environment less what a battery run of its own would switch (the wgmma
    tiles off, a kernel cache elsewhere)."""
    return {k: v for k, v in os.environ.items() if k not in ("GPUCONV_WGMMA", "GPUCONV_CUDA_CACHE", "CUPY_CACHE_DIR")}


def run_battery(tmp_path, **env):
    out, results = tmp_path / "out", tmp_path / "results"
    env = {**battery_environ(), "PYTHONPATH": str(REPO), "PYTHON": sys.executable, "OUT": str(out),
           "GPUCONV_BENCH_RESULTS": str(results), "HOME": str(tmp_path / "home"),
           "GPU_RUN_CACHES": str(tmp_path / "no-caches.tar.gz"), **env}
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(BENCH / "run_gpu.sh")], capture_output=True, text=True, env=env, timeout=180,
                          cwd=REPO)
    return proc, out, time.monotonic() - t0


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
def test_gpu_battery_without_a_gpu_fails_in_seconds_and_still_reports(tmp_path):
    if B.cuda_available():
        pytest.skip("a GPU is present: this test checks the no-GPU flow")
    proc, out, seconds = run_battery(tmp_path)
    assert proc.returncode == 1 and seconds < 60, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    assert re.match(r"FAILED\s+smoke: no usable GPU", summary)
    assert B.cuda_status()[:60] in summary  # why, in the summary itself
    assert sorted(p.name for p in out.iterdir()) == ["records.tar.gz", "run_gpu.log", "summary.txt"]
    log = (out / "run_gpu.log").read_text()
    assert "numpy" in log and "python modules missing:" in log and "stopping" in proc.stdout
    assert "data: " in log  # the real subset's path, or what its absence costs


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python on a GPU machine: every command passes at once, except bench_ops, which hangs,
# the wgmma probe where FAKE_WGMMA_FAILS is set, and the command that FAKE_HANG names.
case "$*" in
  *"${FAKE_HANG:-no such command}"*) echo "fake python: hanging"; sleep 60 ;;
  *"find_spec('${FAKE_MISSING:-no such module}')"*) exit 1 ;;
  *bench_ops*) echo "fake python: timing max pool"; sleep 60 ;;
  *"--only conv_tc"*) [ -z "${FAKE_WGMMA_FAILS:-}" ] || { echo "CUDARuntimeError: illegal instruction" >&2; exit 1; }
     echo "fake python: wgmma probe" ;;
  *"gpuconv precompile"*) mkdir -p "$GPUCONV_CUDA_CACHE"
     echo "fake cubin" > "$GPUCONV_CUDA_CACHE/conv2d_tc-${GPUCONV_WGMMA:-1}.cubin" ;;
  *"bench_conv2d.py --layers airbench94"*) mkdir -p "$GPUCONV_BENCH_RESULTS"
     echo '{"name": "conv2d"}' > "$GPUCONV_BENCH_RESULTS/conv2d-fake-gpu-airbench94.json" ;;
  *bench_conv2d*) mkdir -p "$GPUCONV_BENCH_RESULTS"; echo '{"name": "conv2d"}' > "$GPUCONV_BENCH_RESULTS/conv2d-fake-gpu.json" ;;
  -) cat >/dev/null; echo "fake python: versions" ;;
  *) echo "fake python: $* (GPUCONV_WGMMA=${GPUCONV_WGMMA:-unset})" ;;
esac
"""


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
def _fake_tools(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(FAKE_PYTHON)
    (bin_dir / "compute-sanitizer").write_text("#!/usr/bin/env bash\necho 'fake sanitizer'\n")
    (bin_dir / "ncu").write_text("#!/usr/bin/env bash\necho 'fake ncu'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return dict(PYTHON=str(fake), PATH=f"{bin_dir}:{os.environ['PATH']}")


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
@pytest.mark.slow
def test_gpu_battery_caps_every_stage_and_publishes_after_each(tmp_path):
    """The stage machinery with a stand-in interpreter and compute-sanitizer: stages run in order, a
    hung stage is cut at its cap, a stage the budget cannot fit is skipped, and $OUT holds the
    summary, the log and the records after every stage (at most 8 files, 2 folders deep). A cap set
    by GPU_RUN_CAPS replaces the script's (bench_ops' 40 s cut to the least a stage gets, 15 s)."""
    proc, out, seconds = run_battery(tmp_path, GPU_RUN_BUDGET_S="38", GPU_RUN_CAPS="bench_ops=15 bench_opz=20",
                                     **_fake_tools(tmp_path))
    summary = (out / "summary.txt").read_text().splitlines()
    names = [line.split()[1] for line in summary]
    assert proc.returncode == 1 and seconds < 120, proc.stdout[-3000:]
    # the first measurements of a GPU first (tests, conv2d against the last record, the airbench94
    # recipe eager, graphed and in PyTorch), what was measured before last
    assert names == ["precompile", "wgmma_probe", "smoke", "tests", "bench_conv2d", "bench_airbench", "airbench",
                     "airbench_graph", "bench_conv2d_airbench", "bench_conv2d_grouped", "bench_step", "bench_step_autotune", "sanitizer_memcheck",
                     "sanitizer_racecheck", "profile_step", "bench_ops", "bench_conv2d_nchw", "bench_cs231n", "bench_epoch", "parity", "ncu",
                     "bench_airbench96", "bench_airbench_muon", "bench_airbench96_faster", "bench_models"], summary
    status = [line.split()[0] for line in summary]
    # bench_ops is cut at its 15 s cap, though it would hang for 60; then the 38 s budget, less the
    # 10 s kept for the caches, leaves under 15 s: every later stage is skipped, none is run short.
    assert status == ["ok"] * 15 + ["TIMEOUT"] + ["SKIPPED"] * 9, summary
    assert "START bench_ops (limit 15s)" in (out / "run_gpu.log").read_text()
    assert summary[15].endswith("last output: fake python: timing max pool")  # where the cut stage was
    assert all(re.search(r"\d+s of the budget left$", line) for line in summary[16:])
    assert all(len(line.split()) == 3 for line in summary[:15])
    log = (out / "run_gpu.log").read_text()
    assert "GPU_RUN_CAPS named bench_opz, which is no stage that ran" in log  # a typo named, not ignored
    assert "GPUCONV_WGMMA=unset" in log  # the probe passed: the tiles stay on
    # every GPU test reported (no --maxfail), named as it ends, a hung one ended by a thread; the
    # first hardware runs (the CUDA-graph capture, the wgmma tiles, autotuning) handed out first
    tests = next(line for line in log.splitlines() if "START tests" in line)
    assert "--maxfail" not in tests and " -v " in tests and "--timeout-method thread" in tests
    first = ("tests/test_graphs.py", "tests/test_wgmma.py", "tests/test_autotune.py")
    rest = sorted(f"tests/{p.name}" for p in (REPO / "tests").glob("test_*.py") if f"tests/{p.name}" not in first)
    assert " ".join(first + (rest[0],)) in tests  # then the rest in the shell's order
    assert tests.count("tests/test_graphs.py") == 1
    # the cores shared among the 8 workers' BLAS threads (NumPy's references spin otherwise)
    per = max(1, len(os.sched_getaffinity(0)) // 8)  # (nproc)
    assert all(f"{v}={os.environ.get(v, per)} " in tests for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"))
    # each conv2d record compared as soon as it is written, with another GPU's where this one has none
    order = [log.index(s) for s in ("START bench_conv2d ", "compare_conv.py", "START bench_airbench ",
                                    "START bench_conv2d_airbench ", "conv2d-fake-gpu-airbench94.json --other-gpu-ok",
                                    "START bench_conv2d_grouped ", "START bench_step ")]
    assert order == sorted(order) and "conv2d-fake-gpu.json --other-gpu-ok" in log
    assert "bench_airbench.py --precisions bf16,fp32 --save" in log  # the recipe's precision first
    graph = next(line for line in log.splitlines() if "START airbench_graph" in line)  # the CLI's flag, on real data
    assert graph.endswith("--no-progress --cuda-graph") and "--recipe airbench94" in graph
    assert sorted(p.name for p in out.iterdir()) == ["caches.tar.gz", "records.tar.gz", "run_gpu.log", "summary.txt"]
    with tarfile.open(out / "records.tar.gz") as tar:
        members = tar.getnames()
    assert "./conv2d-fake-gpu.json" in members and any(m.endswith("/bench_ops.log") for m in members)
    assert all(m.count("/") <= 3 for m in members)


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
@pytest.mark.parametrize("caps", ["bench_ops", "bench_ops=1m", "bench_ops=15,tests=9", "=15"])
def test_gpu_battery_refuses_a_cap_it_cannot_read_before_any_stage(tmp_path, caps):
    proc, out, seconds = run_battery(tmp_path, GPU_RUN_CAPS=f"tests=200 {caps}", **_fake_tools(tmp_path))
    assert proc.returncode == 2 and seconds < 10, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"GPU_RUN_CAPS holds '{caps}', not NAME=SECONDS" in proc.stderr
    assert not out.exists()  # nothing ran, nothing was published


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
@pytest.mark.parametrize("hang", ["gpuconv precompile", "tests/test_graphs.py"])
def test_gpu_battery_publishes_the_versions_and_the_caches_before_a_stage_hangs(tmp_path, hang):
    """$OUT holds the versions (and an empty summary) before the first stage starts, the kernel
    caches as soon as the precompile stage has built them, and a running stage's output so far: a
    call cut during a hung stage still says what machine and software it ran on, how far that stage
    got, and hands the compiled kernels to the next run."""
    import signal
    out = tmp_path / "out"
    env = {**battery_environ(), "GPU_RUN_CACHES": str(tmp_path / "none"), "PYTHONPATH": str(REPO), "OUT": str(out),
           "GPUCONV_BENCH_RESULTS": str(tmp_path / "results"),
           "HOME": str(tmp_path / "home"), "FAKE_HANG": hang, "GPU_RUN_PUBLISH_EVERY_S": "1", **_fake_tools(tmp_path)}
    proc = subprocess.Popen(["bash", str(BENCH / "run_gpu.sh")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=REPO, start_new_session=True)
    def text(name):
        return (out / name).read_text() if (out / name).exists() else ""

    # published by then: the versions (before the precompile), the smoke stage's line (before the tests)
    ready = ((lambda: "fake python: versions" in text("run_gpu.log")) if hang.startswith("gpuconv")
             else (lambda: " smoke " in text("summary.txt")))
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.2)
        time.sleep(2.5)
        assert proc.poll() is None, f"the battery ended before {hang} hung"
        # the hung stage's output so far, under its name
        running = text("running_stage.log")
        assert running.startswith(f"== {'precompile' if hang.startswith('gpuconv') else 'tests'}, running (limit ")
        assert running.rstrip().endswith("fake python: hanging")
        assert "fake python: versions" in (out / "run_gpu.log").read_text()
        if hang.startswith("gpuconv"):
            assert (out / "summary.txt").read_text() == "" and not (out / "caches.tar.gz").exists()
        else:
            assert (out / "summary.txt").read_text().split()[:2] == ["ok", "precompile"]
            with tarfile.open(out / "caches.tar.gz") as tar:
                assert ".cache/gpuconv/cuda/conv2d_tc-1.cubin" in tar.getnames()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_sanitize_gpu_expects_only_the_kernels_that_run_on_this_gpu(monkeypatch):
    """On a GPU without the wgmma tiles (off Hopper, or GPUCONV_WGMMA=0 after a failed probe) or
    without tensor cores, the launchers send other tiles: "every kernel launched" must not
    count those as missing (the battery's smoke and sanitizer stages would fail by construction)."""
    sanitize = load("sanitize_gpu")
    from gpuconv import kernels
    wgmma = {k for k in sanitize.EXPECTED if "_tcwg" in k}
    assert len(wgmma) == 12 and sanitize.expected_here("sim") == (sanitize.EXPECTED, None)
    monkeypatch.setattr(kernels, "tensor_cores_available", lambda target, device=None, dtype=None, tf32=False: True)
    monkeypatch.setattr(kernels, "wgmma_available", lambda target, device=None: target == "sim")
    expected, note = sanitize.expected_here("cuda")
    assert expected == sanitize.EXPECTED - wgmma and note.startswith("12 wgmma kernels left out")
    monkeypatch.setattr(kernels, "wgmma_available", lambda target, device=None: True)
    assert sanitize.expected_here("cuda") == (sanitize.EXPECTED, None)
    monkeypatch.setattr(kernels, "tensor_cores_available",  # a V100
                        lambda target, device=None, dtype=None, tf32=False: target == "sim")
    expected, note = sanitize.expected_here("cuda")
    assert not [k for k in expected if "_tc" in k or "gemm_tc" in k] and "conv2d_forward_v2" in expected
    assert "compute capability below 7.5" in note
    # a T4: its float16 cases launch every mma.sync kernel, the wgmma ones left out
    monkeypatch.undo()  # the real tensor_cores_available, on a faked compute capability
    monkeypatch.setattr(kernels, "_compute_capability", lambda device: 75)
    monkeypatch.setattr(kernels, "wgmma_available", lambda target, device=None: target == "sim")
    expected, note = sanitize.expected_here("cuda")
    assert expected == sanitize.EXPECTED - wgmma and "gemm_tc_nn" in expected and "wgmma" in note


def test_sanitize_gpu_runs_the_named_tiles_alone(capsys, monkeypatch):
    """The battery's wgmma probe: conv_tc's tiles named on the command line, nothing else."""
    sanitize = load("sanitize_gpu")
    monkeypatch.setattr(sanitize.LC, "MIN_SPLIT_CHUNK", sanitize.LC.MIN_SPLIT_CHUNK)  # conv_tc lowers it
    assert sanitize.main(["--device", "sim", "--only", "conv_tc", "--variants", "tcwgn64"]) == 0
    ran = capsys.readouterr().out.split("RAN ", 1)[1].split()[0].split(",")
    assert {"conv2d_forward_tcwgn64", "conv2d_backward_data_tcwgn64"} <= set(ran)
    assert not [k for k in ran if k.endswith(("_tc", "_tc128", "_tcwg")) or "pool" in k]


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
def test_gpu_battery_runs_on_without_the_wgmma_tiles_when_their_probe_fails(tmp_path):
    proc, out, _ = run_battery(tmp_path, STAGES="tests caches", FAKE_WGMMA_FAILS="1", **_fake_tools(tmp_path))
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split()[:2] for line in summary] == [["ok", "precompile"], ["FAILED(rc=1)", "wgmma_probe"],
                                                      ["ok", "precompile_without_wgmma"], ["ok", "smoke"],
                                                      ["ok", "tests"]], summary
    assert summary[1].endswith("CUDARuntimeError: illegal instruction")  # why, in the summary itself
    # the precompile's time is its longest build's (conv2d_tc's sm_90a builds, a minute or more on a
    # slow core): cut short, the probe would compile them inside its own cap and misread a timeout
    assert "START precompile (limit 150s)" in (out / "run_gpu.log").read_text()
    log = (out / "run_gpu.log").read_text()
    assert "every later stage runs without them (GPUCONV_WGMMA=0)" in log
    assert "sanitize_gpu.py (GPUCONV_WGMMA=0)" in log and "GPUCONV_WGMMA=unset" not in log.split("wgmma_probe")[-1]
    # conv2d_tc built again, for sm_90 without wgmma, at once; and handed on with the first builds
    with tarfile.open(out / "caches.tar.gz") as tar:
        assert {".cache/gpuconv/cuda/conv2d_tc-1.cubin", ".cache/gpuconv/cuda/conv2d_tc-0.cubin"} <= set(tar.getnames())
    assert proc.returncode == 1


FAKE_BUILD_PYTHON = """#!/usr/bin/env bash
# Stands in for python in make gpu-cache: pip installs an NVRTC wheel's layout, CuPy reports the
# release FAKE_NVRTC (else 13.0), precompile writes one build per GPUCONV_WGMMA setting.
case "$*" in
  *"pip install"*) t=$(echo "$*" | sed -n 's/.*--target \\([^ ]*\\).*/\\1/p'); mkdir -p "$t/nvidia/cu13/lib"
     : > "$t/nvidia/cu13/lib/libnvrtc.so.13"; : > "$t/nvidia/cu13/lib/libnvrtc-builtins.so.13.0"
     echo "$*" > "$FAKE_LOG.pip" ;;
  *getVersion*) echo "${FAKE_NVRTC:-13.0}"; echo "$LD_PRELOAD" > "$FAKE_LOG.preload" ;;
  *"gpuconv precompile --arch sm_90"*) mkdir -p "$GPUCONV_CUDA_CACHE"
     echo cubin > "$GPUCONV_CUDA_CACHE/conv2d_tc-built${GPUCONV_WGMMA:-1}.cubin"; echo "1 builds, 1 compiled" ;;
  *) echo "unexpected: $*" >&2; exit 3 ;;
esac
"""


def _build_gpu_cache(tmp_path, **env):
    """benchmarks/gpu_cache.sh in a copy of the scripts under ``tmp_path/repo``, with a stand-in
    python (FAKE_BUILD_PYTHON)."""
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    (repo / "benchmarks" / "gpu_cache.sh").write_text((BENCH / "gpu_cache.sh").read_text())
    fake = tmp_path / "build-python"
    fake.write_text(FAKE_BUILD_PYTHON)
    fake.chmod(0o755)
    env = {**battery_environ(), "PYTHON": str(fake), "FAKE_LOG": str(tmp_path / "fake"), **env}
    proc = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_cache.sh")], capture_output=True, text=True,
                          env=env, timeout=60, cwd=tmp_path)
    return proc, repo


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
def test_gpu_cache_is_built_by_the_devices_nvrtc_and_found_where_the_battery_looks(tmp_path):
    """make gpu-cache compiles with the NVRTC release of the GPU_NVRTC wheel (preloaded, checked
    before any build), both with and without the wgmma tiles, into .gpu-cache/caches.tar.gz; the
    battery unpacks it where its kernel cache is, says what it carried, and hands it on."""
    proc, repo = _build_gpu_cache(tmp_path, GPU_NVRTC="13.0.48")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nvidia-cuda-nvrtc==13.0.48" in (tmp_path / "fake.pip").read_text()
    assert (tmp_path / "fake.preload").read_text().strip().split(":")[0].endswith("/nvidia/cu13/lib/libnvrtc.so.13")
    assert "2 kernel builds (NVRTC 13.0, sm_90) in .gpu-cache/caches.tar.gz" in proc.stdout
    with tarfile.open(repo / ".gpu-cache" / "caches.tar.gz") as tar:
        built = {".cache/gpuconv/cuda/conv2d_tc-built1.cubin", ".cache/gpuconv/cuda/conv2d_tc-built0.cubin"}
        assert built <= set(tar.getnames())
    # the battery, with the stand-in tools, unpacks it into its kernel cache
    battery, out, _ = run_battery(tmp_path, STAGES="caches", GPU_RUN_CACHES=str(repo / ".gpu-cache" / "caches.tar.gz"),
                                  **_fake_tools(tmp_path))
    log = (out / "run_gpu.log").read_text()
    assert "kernel caches carried: 2 gpuconv and 0 CuPy kernel files" in log, battery.stdout[-2000:]
    with tarfile.open(out / "caches.tar.gz") as tar:  # handed on with what the battery built
        assert built | {".cache/gpuconv/cuda/conv2d_tc-1.cubin"} <= set(tar.getnames())


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
def test_gpu_cache_refuses_an_nvrtc_other_than_the_one_asked_for(tmp_path):
    """A CuPy that loads another NVRTC than the wheel's would store builds under a key the device
    never asks for: nothing is built, and the message says which release was loaded."""
    proc, repo = _build_gpu_cache(tmp_path, FAKE_NVRTC="13.5")
    assert proc.returncode == 1
    assert "CuPy loaded NVRTC 13.5, not the 13.0" in proc.stderr
    assert not (repo / ".gpu-cache").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
@pytest.mark.parametrize("missing", ["xdist", "pytest_timeout"])
def test_gpu_battery_runs_its_tests_without_a_missing_pytest_plugin(tmp_path, missing):
    """Nothing is pip-installed on a lent GPU: without pytest-xdist the GPU tests run in one process
    (no -n, no BLAS thread split), without pytest-timeout with no per-test timeout, each said in the
    log, where the unknown option would have failed the whole stage."""
    proc, out, _ = run_battery(tmp_path, STAGES="tests", FAKE_MISSING=missing, **_fake_tools(tmp_path))
    log = (out / "run_gpu.log").read_text()
    tests = next(line for line in log.splitlines() if "START tests" in line)
    assert (out / "summary.txt").read_text().splitlines()[-1].split()[:2] == ["ok", "tests"]
    if missing == "xdist":
        assert "pytest-xdist missing" in log and " -n " not in tests and "OPENBLAS_NUM_THREADS" not in tests
        assert "--timeout 60" in tests
    else:
        assert "pytest-timeout missing" in log and "--timeout" not in tests and " -n 8 " in tests


@pytest.mark.gpu
@pytest.mark.skipif(not B.cuda_available(), reason=f"no GPU: {B.cuda_status()}")
@pytest.mark.parametrize("name", SCRIPTS)
def test_cuda_tiny_run_times_and_keeps_the_step_device_resident(name, tmp_path):
    proc = run_script(name, "--tiny", "--json", "--no-torch", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout)
    assert rec["timed"] is True and rec["validation"]["passed"] and rec["environment"]["cuda_runtime"]
    if name == "bench_ops":
        assert all(r["ms"] > 0 and r["gbs"] > 0 and r["copy_gbs"] > 0 and r["host_ms"] > 0
                   and isinstance(r["launch_bound"], bool) for r in rec["results"]["memory"])
    elif name == "bench_step":
        for r in rec["results"]:
            assert r["ms"] > 0 and r["host_transfers"] == 0 and r["pool_stable"] is True
            assert r["graph_ms"] is None or r["graph_ms"] > 0
    else:
        assert rec["results"]["epoch_s"] > 0 and rec["results"]["host_transfers"] == 0


# ----------------------------------------------------------------------------- accuracy parity
DATA = SUBSET.parent  # the folder holding cifar-10-batches-py ($GPUCONV_TEST_DATA's parent)


@pytest.mark.skipif(not DATA.exists(), reason=f"the real CIFAR-10 subset is not at {DATA}")
@pytest.mark.slow
def test_parity_sim_tiny_trains_both_devices_on_real_images_and_records_the_curves(tmp_path):
    proc = run_script("parity", "--device", "sim", "--tiny", "--json", "--save", "--data", str(DATA),
                      env={"GPUCONV_BENCH_RESULTS": str(tmp_path)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout)
    assert rec["benchmark"] == "parity" and rec["environment"]["device_kind"] == "sim"
    assert [(r["device"], r["seed"]) for r in rec["runs"]] == [("cpu", 0), ("sim", 0), ("cpu", 1), ("sim", 1)]
    names = [c["name"] for c in rec["validation"]["checks"]]
    assert {"seed 0: step 1 loss", "seed 0: epoch losses", "seed 1: held-out accuracy"} <= set(names)
    assert rec["validation"]["passed"]
    for run in rec["runs"]:
        assert len(run["step_loss"]) == 2 * 3 and len(run["epoch_loss"]) == 2  # 96 images, batch 32, 2 epochs
        assert run["n_val"] == rec["noise"]["n_val"] > 0 and 0.0 <= run["accuracy"] <= 1.0
    # The kernels on the simulator follow NumPy step by step: the first losses agree to rounding.
    cpu0, sim0 = rec["runs"][0], rec["runs"][1]
    np.testing.assert_allclose(sim0["step_loss"], cpu0["step_loss"], rtol=1e-4)
    assert len(list(tmp_path.glob("*-parity.json"))) == 1


def test_parity_of_a_precision_widens_only_the_first_steps_tolerance():
    """bf16 training against the float32 CPU run: the first losses may differ by bf16 rounding
    (8u = 3% at step 1), the epoch and accuracy bounds stay the seed noise."""
    parity = load("parity")

    def run(precision, seed, acc, losses):
        return {"device": "cpu", "precision": precision, "seed": seed, "accuracy": acc, "n_val": 1000,
                "step_loss": losses, "epoch_loss": [sum(losses) / len(losses)]}

    runs = [run("fp32", 0, 0.50, [2.30, 2.0, 1.8]), run("bf16", 0, 0.50, [2.32, 2.02, 1.8]),
            run("fp32", 1, 0.52, [2.31, 2.1, 1.9]), run("bf16", 1, 0.51, [2.29, 2.08, 1.9])]
    checks = parity.common.Checks()
    parity.compare(runs, "cpu", checks, "bf16")
    assert checks.passed, checks.failures()
    checks = parity.common.Checks()
    parity.compare(runs, "cpu", checks, "fp32")  # the same curves held to float32's rounding: they differ
    assert any(f.startswith("seed 0: step 1 loss") for f in checks.failures())
    assert parity.first_step_tolerances("bf16") == (8 * 2 ** -8, 16 * 2 ** -8)


def test_parity_checks_fail_when_the_device_drifts():
    parity = load("parity")

    def run(device, seed, acc, losses):
        return {"device": device, "seed": seed, "accuracy": acc, "n_val": 1000, "step_loss": losses,
                "epoch_loss": [sum(losses) / len(losses)]}

    good = [run("cpu", 0, 0.50, [2.3, 2.0, 1.8]), run("cuda", 0, 0.51, [2.3, 2.0, 1.8]),
            run("cpu", 1, 0.52, [2.31, 2.1, 1.9]), run("cuda", 1, 0.52, [2.31, 2.1, 1.9])]
    checks = parity.common.Checks()
    noise = parity.compare(good, "cuda", checks)
    assert checks.passed, checks.failures()
    assert noise["accuracy_tolerance"] == pytest.approx(0.04)  # twice the CPU seed spread (above the 0.03 floor)
    assert noise["pooled_epoch_spread"] == pytest.approx(abs(sum([2.31, 2.1, 1.9]) - sum([2.3, 2.0, 1.8])) / 3)
    bad = [dict(r) for r in good]
    bad[1] = run("cuda", 0, 0.30, [2.3, 2.6, 2.9])  # the device run drifted away and learned less
    checks = parity.common.Checks()
    parity.compare(bad, "cuda", checks)
    failed = {f.split(":")[0] + ":" + f.split(":")[1] for f in checks.failures()}
    assert failed == {"seed 0: steps 1-5 loss", "seed 0: epoch losses", "seed 0: held-out accuracy"}
    # A run that failed is a failed check naming it, and the other seed is still compared.
    broken = [dict(r) for r in good]
    broken[1] = {"device": "cuda", "seed": 0, "seconds": 1.0, "error": "gpuconv train failed (exit 1): boom"}
    checks = parity.common.Checks()
    parity.compare(broken, "cuda", checks)
    assert [f.split(" (")[0] for f in checks.failures()] == ["seed 0: cuda fp32 run"] and "boom" in checks.failures()[0]
    assert any(c["name"] == "seed 1: held-out accuracy" and c["ok"] for c in checks.items)




# ----------------------------------------------------------------------------- the airbench94 recipe vs PyTorch
@pytest.mark.slow
def test_airbench_bench_without_torch_times_gpuconv_alone_and_says_so(tmp_path):
    proc = run_script("bench_airbench", "--device", "sim", "--tiny", "--no-torch", "--precisions", "fp32", "--json",
                      "--save", env={"GPUCONV_BENCH_RESULTS": str(tmp_path)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout)
    assert rec["baseline"] is None and rec["epochs"] == 2 and rec["batch_size"] == 16
    r = rec["results"]["fp32"]
    assert r["torch_s"] is None and r["gpuconv_s"] is None and np.isfinite(r["gpuconv_loss"])
    assert np.isfinite(r["graph_loss"]) and r["graph_s"] is None
    assert [c["name"] for c in rec["validation"]["checks"]] == [
        "fp32: cuda-graph steps give the eager steps' parameters (2 epochs, the whitening bias frozen in the second, "
        "bit for bit)",
        "fp32 gpuconv: final loss finite", "fp32 graph: final loss finite"]
    assert rec["validation"]["checks"][0]["error"] == 0.0
    assert len(list(tmp_path.glob("*-bench_airbench.json"))) == 1
    # each side on stderr as it ends (the battery's log keeps them when the stage is cut at its cap)
    said = [line for line in proc.stderr.splitlines() if line.startswith("bench_airbench fp32 ")]
    assert said == [f"bench_airbench fp32 gpuconv: last epoch's loss {r['gpuconv_loss']:.4f}",
                    f"bench_airbench fp32 graph: last epoch's loss {r['graph_loss']:.4f}"], proc.stderr[-2000:]


def test_airbench_graph_check_reaches_the_whitening_bias_freeze(monkeypatch):
    """validate_graph compares the eager and the graphed run over two epochs, the whitening bias
    trained in the first and frozen in the second (the step changes: on a GPU a new capture, checked
    bit for bit), not over one epoch that the recipe's freeze (after 3) never reaches."""
    bench = load("bench_airbench")
    args = bench.common.parse(bench.parser(), ["--device", "sim", "--tiny"])
    images, labels = bench.synthetic(bench.TINY["images"])
    runs, setup = [], bench.gpuconv_setup

    def recording_setup(*a, **k):
        model, loader, trainer = setup(*a, **k)
        runs.append((model._layers["whiten"].bias, trainer))
        return model, loader, trainer

    monkeypatch.setattr(bench, "gpuconv_setup", recording_setup)
    checks = bench.validate_graph(images, labels, bench.recipe(args), args, ["fp32"], 2)
    assert checks.passed, checks.failures()
    assert [t._graph is not None for _, t in runs] == [False, True] and runs[1][1]._graph._inputs is not None
    for bias, trainer in runs:
        assert trainer.epoch == 2 and not bias.requires_grad  # the second epoch trained with the bias frozen
    # A graphed second epoch that trains otherwise fails the check: its steps reach the compared
    # parameters (the recipe's lookahead, every 5 steps, put 4 steps' model back on its initial weights)
    def other_second_epoch(*a, **k):
        model, loader, trainer = setup(*a, **k)
        if trainer._graph is not None:
            freeze = trainer.epoch_start
            trainer.epoch_start = lambda epoch: (freeze(epoch), epoch and setattr(trainer, "label_smoothing", 0.1))
        return model, loader, trainer

    monkeypatch.setattr(bench, "gpuconv_setup", other_second_epoch)
    assert not bench.validate_graph(images, labels, bench.recipe(args), args, ["fp32"], 2).passed


def test_airbench_baseline_takes_the_recipes_steps_and_the_check_can_fail(monkeypatch, capsys):
    """The PyTorch baseline agrees with gpuconv's recipe step for step (logits, three optimizer
    steps) and over whole epochs of the same batches (loss, parameters); a baseline whose
    batch-norm biases learn at half the recipe's rate fails the checks, and so does one whose
    whitening bias trains for one epoch fewer (seen only over epochs)."""
    torch = pytest.importorskip("torch")
    bench = load("bench_airbench")
    args = bench.common.parse(bench.parser(), ["--device", "sim", "--tiny"])
    images, labels = bench.synthetic(bench.TINY["images"])
    r = bench.recipe(args)
    checks = bench.common.Checks()
    steps = bench.validate(images, labels, r, args, checks, torch, 2)
    assert checks.passed and len(checks.as_dict()["checks"]) == 1, checks.failures()
    assert steps.passed and len(steps.as_dict()["checks"]) == 3, steps.failures()
    with monkeypatch.context() as m:
        m.setitem(bench.airbench_torch.HYPER, "bias_scaler", 32.0)
        steps = bench.validate(images, labels, r, args, bench.common.Checks(), torch, 2)
        assert steps.failures() and "parameters after 3 recipe steps" in steps.failures()[0]
    monkeypatch.setitem(bench.airbench_torch.HYPER, "whiten_bias_epochs", 2)
    steps = bench.validate(images, labels, r, args, bench.common.Checks(), torch, 2)
    assert [f for f in steps.failures() if f.startswith("4 epochs on the same batches: parameters")]
    assert not [f for f in steps.failures() if "3 recipe steps" in f]  # the first steps still agree


@pytest.mark.parametrize("name", ["airbench95", "airbench96", "airbench94_muon"])
def test_airbench_baseline_of_the_other_recipes_takes_their_steps(name):
    """airbench95, airbench96 and airbench94_muon against their PyTorch baselines: the same logits,
    three steps and four epochs on gpuconv's loader's batches (airbench96's cutout in them, its
    residual blocks, its warmup-then-decay schedule; muon's Muon/SGD pair, its head, its whitening
    bias's own lr decay); a baseline on airbench94's schedule fails the epochs, and so does a muon
    baseline whose whitening bias follows the common decay."""
    torch = pytest.importorskip("torch")
    bench = load("bench_airbench")
    args = bench.common.parse(bench.parser(), ["--device", "sim", "--tiny", "--recipe", name])
    images, labels = bench.synthetic(bench.TINY["images"])
    r = bench.recipe(args)
    assert bench.widths_of(r, 2) == {"airbench95": (2, 6, 6), "airbench96": (2, 6, 8),
                                     "airbench94_muon": (2, 8, 8)}[name]
    assert bench.widths_of(r, None) == bench.airbench_torch.RECIPES[name]["widths"]
    checks = bench.common.Checks()
    steps = bench.validate(images, labels, r, args, checks, torch, 2)
    assert checks.passed and steps.passed, checks.failures() + steps.failures()
    wrong = {"airbench96": dict(warmup_fraction=0.23, lr_end=0.07), "airbench94_muon": dict(whiten_bias_decay=False)}
    if name in wrong:
        with pytest.MonkeyPatch.context() as m:
            m.setitem(bench.airbench_torch.RECIPES, name, dict(bench.airbench_torch.RECIPES[name], **wrong[name]))
            steps = bench.validate(images, labels, r, args, bench.common.Checks(), torch, 2)
        assert [f for f in steps.failures() if f.startswith("4 epochs on the same batches")]


def test_airbench_bench_of_the_selection_recipe_trains_on_what_the_proxy_selects():
    """airbench96_faster in the benchmark: gpuconv's run trains through the selection loader (the
    proxy's run timed with it) on the recipe's lr per selected image, and its CUDA-graph row is
    checked against the eager run; no torch needed."""
    bench = load("bench_airbench")
    args = bench.common.parse(bench.parser(), ["--device", "sim", "--tiny", "--recipe", "airbench96_faster"])
    images, labels = bench.synthetic(bench.TINY["images"])
    r = bench.recipe(args)
    from gpuconv.selection import SelectedLoader
    with bench.common.device_context(args):
        _, loader, _ = bench.gpuconv_setup(images, labels, r, "fp32", "sim", 2)
    assert isinstance(loader, SelectedLoader) and bench.mean_over(r, len(images)) == 8 == r["batch_size"] // 2
    assert bench.mean_over(bench.recipe(bench.common.parse(bench.parser(), ["--tiny"])), len(images)) == 16
    checks = bench.validate_graph(images, labels, r, args, ["fp32"], 2)
    assert checks.passed, checks.failures()


def test_airbench_baseline_of_the_selection_recipe_takes_its_steps(monkeypatch):
    """airbench96_faster against its PyTorch baseline: the same three steps when the baseline's
    summed loss is scaled to the selected images the recipe's lr is per, and the same four epochs
    when the baseline trains on the recorded (selected) batches as they are; at the whole batch's
    count, or with the baseline selecting again from the selected rows, the checks fail."""
    torch = pytest.importorskip("torch")
    bench = load("bench_airbench")
    args = bench.common.parse(bench.parser(), ["--device", "sim", "--tiny", "--recipe", "airbench96_faster"])
    images, labels = bench.synthetic(bench.TINY["images"])
    r = bench.recipe(args)
    checks = bench.common.Checks()
    steps = bench.validate(images, labels, r, args, checks, torch, 2)
    assert checks.passed and steps.passed and len(steps.as_dict()["checks"]) == 3, checks.failures() + steps.failures()
    monkeypatch.setattr(bench, "mean_over", lambda r, n: r["batch_size"])
    monkeypatch.setattr(bench, "unselected", lambda h: h)
    failed = bench.validate(images, labels, r, args, bench.common.Checks(), torch, 2).failures()
    assert [f for f in failed if "3 recipe steps" in f] and [f for f in failed if f.startswith("4 epochs")]


def test_airbench_torch_help_needs_no_torch_and_its_absence_is_named(tmp_path):
    """--help works without torch; a run without it says what to install (exit 2), no traceback."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "torch.py").write_text("raise ImportError('torch is hidden for this test')\n")
    env = {"PYTHONPATH": f"{hide}{os.pathsep}{REPO}"}
    assert "--recipe" in run_script("airbench_torch", "--help", env=env).stdout
    proc = run_script("airbench_torch", "--images", "64", env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the PyTorch baseline needs torch" in proc.stderr and "pip install torch" in proc.stderr


def test_airbench_torch_muon_network_starts_as_the_muon_recipes():
    """The muon baseline's head divides by its width from unit-std weights and its whitening bias
    keeps PyTorch's draw, as gpuconv's airbench94_muon network; airbench94's zeroes the bias."""
    torch = pytest.importorskip("torch")
    bench = load("bench_airbench")
    h = bench.airbench_torch.RECIPES["airbench94_muon"]
    tmodel = bench.airbench_torch.build(torch, (4, 16, 16), h=h)
    assert float(tmodel.fc.weight.std()) == pytest.approx(1.0, rel=1e-5) and tmodel.scale.factor == 1 / 16
    assert float(tmodel.whiten.bias.abs().max()) <= 12 ** -0.5 and float(tmodel.whiten.bias.std()) > 0.1
    plain = bench.airbench_torch.build(torch, (4, 16, 16))
    assert float(plain.whiten.bias.abs().max()) == 0 and plain.scale.factor == pytest.approx(1 / 9)


def test_airbench_torch_initializes_as_gpuconv_and_airbench_do():
    """Every 3x3 conv starts as the identity on its first in_channels filters (airbench's
    ``dirac_(w[:w.size(1)])``: all of a block's second conv, whose inputs are its outputs), the
    other filters random; the same structure as gpuconv.models.airbench94."""
    torch = pytest.importorskip("torch")
    bench = load("bench_airbench")
    from gpuconv import cli
    tmodel = bench.airbench_torch.build(torch, (8, 32, 32))
    model, _ = cli.build_model("airbench94", width=8)
    tstate = tmodel.state_dict()
    for name, p in model.named_parameters():
        if not name.endswith(("conv1.weight", "conv2.weight")):
            continue
        ours, theirs = np.asarray(p.data), tstate[name].detach().numpy()
        n = min(ours.shape[:2])  # filters that get an identity: as many as the conv has inputs
        dirac = np.zeros_like(ours[:n])
        dirac[np.arange(n), np.arange(n), 1, 1] = 1
        np.testing.assert_array_equal(ours[:n], dirac, err_msg=name)
        np.testing.assert_array_equal(theirs[:n], dirac, err_msg=name)
        assert ours.shape == theirs.shape and (n == ours.shape[0] or theirs[n:].std() > 0)


def test_airbench_torch_augmentation_is_the_loaders():
    """The baseline's translation and alternating flips, against NumPy on the same draws."""
    torch = pytest.importorskip("torch")
    bench = load("bench_airbench")
    images, labels = bench.synthetic(6)
    loader = bench.airbench_torch.Loader(torch, images, labels, 4, "cpu", padding=2, seed=3)
    state = loader.gen.get_state()
    out = [loader.augmented(e).numpy() for e in (0, 1)]
    loader.gen.set_state(state)
    x = loader.images.numpy()
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    flips = loader.flip.numpy()
    for e in (0, 1):
        dy = torch.randint(0, 5, (6,), generator=loader.gen).numpy()
        dx = torch.randint(0, 5, (6,), generator=loader.gen).numpy()
        want = np.stack([padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32] for i in range(6)])
        flip = flips ^ bool(e % 2)
        want[flip] = want[flip][..., ::-1]
        np.testing.assert_array_equal(out[e], want)
    assert not np.array_equal(out[0], out[1])


def test_airbench_torch_cutout_is_the_loaders():
    """airbench96's cutout in the baseline: after the translation and flip, a square at a corner
    drawn uniformly per image, zeroed in every channel, as gpuconv.data.cutout does it."""
    torch = pytest.importorskip("torch")
    bench = load("bench_airbench")
    from gpuconv.data import cutout
    images, labels = bench.synthetic(8)
    loader = bench.airbench_torch.Loader(torch, images, labels, 4, "cpu", padding=4, seed=1, cutout=12)
    plain = bench.airbench_torch.Loader(torch, images, labels, 4, "cpu", padding=4, seed=1)
    state = loader.gen.get_state()
    got = loader.augmented(0).numpy()
    want = plain.augmented(0).numpy()
    loader.gen.set_state(state)
    for _ in range(2):
        torch.randint(0, 9, (8,), generator=loader.gen)
    cy = torch.randint(0, 21, (8,), generator=loader.gen).numpy()
    cx = torch.randint(0, 21, (8,), generator=loader.gen).numpy()
    np.testing.assert_array_equal(got, cutout(want, cy, cx, 12))
    assert (got == 0).sum() >= 8 * 3 * 144


# ----------------------------------------------------------------------------- SASS instruction mix
def _cuobjdump():
    import shutil
    path = os.environ.get("CUOBJDUMP")
    return path if path and os.path.exists(path) else shutil.which("cuobjdump")


def test_sass_loop_without_its_tools_exits_2_naming_them(tmp_path):
    proc = run_script("sass_loop", env={"PATH": str(tmp_path), "CUOBJDUMP": ""})
    assert proc.returncode == 2 and "nvcc" in proc.stderr and "cuobjdump" in proc.stderr


@pytest.mark.skipif(_cuobjdump() is None or __import__("shutil").which("nvcc") is None,
                    reason="needs nvcc and cuobjdump (or $CUOBJDUMP)")
def test_sass_loop_finds_each_tensor_core_kernels_k_tile():
    """One pass of the main loop holds exactly one k-tile's MMAs (2 mma steps x the warp tile's
    16x8 tiles: 64 in the 64x64 warp tiles of tc128w, 32 in the 64x32 of tc128, 16 in the 32x32
    of the 64x64 shape) and its ldmatrix reads; a wgmma tile's, its warpgroup's 2 k-steps of 16
    (tcwgn64: 2 for each of a warpgroup's two 64-row tiles), read from shared memory by descriptor (no
    ldmatrix)."""
    proc = run_script("sass_loop", "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["kernel"]: r for r in json.loads(proc.stdout)}
    assert {"conv2d_forward_tc128", "conv2d_backward_data_tc", "conv2d_backward_weight_tc128", "gemm_tc_nt"} <= set(rows)
    # the 16-byte-copy loops are second instances; the data gradient has one loop (every stride's
    # phases are unit-stride GEMMs)
    assert {"conv2d_backward_weight_tc128#2", "gemm_tc_nt#2"} <= set(rows)
    assert not [name for name in rows if name.startswith("conv2d_backward_data_") and "#" in name], sorted(rows)
    assert {"conv2d_forward_tcwg", "conv2d_backward_weight_tcwgm64", "conv2d_backward_data_tcwgn64"} <= set(rows)
    for name, r in rows.items():
        base = name.split("#")[0]
        if "_tcwg" in base:
            assert r["mma"] == (4 if base.endswith("n64") else 2) and "ldmatrix" not in r, (name, r)
            continue
        assert r["mma"] == (64 if base.endswith("128w") else 32 if base.endswith("128") else 16), (name, r)
        assert r["ldmatrix"] >= 4 and r["instructions"] > r["mma"] + r["ldmatrix"], (name, r)


@pytest.mark.skipif(_cuobjdump() is None or __import__("shutil").which("nvcc") is None,
                    reason="needs nvcc and cuobjdump (or $CUOBJDUMP)")
def test_sass_loop_finds_each_cuda_core_convolutions_round():
    """--build f32: one pass of a tiled conv2d.cu kernel's main loop is one shared-memory round of
    8 reduction steps x 8 x 8 outputs per thread = 512 FFMAs, v2 reading them as 128 scalar loads,
    v3 as 32 16-byte ones; one loop each (the data gradient's phases are unit-stride at any stride:
    no second instance)."""
    proc = run_script("sass_loop", "--build", "f32", "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["kernel"]: r for r in json.loads(proc.stdout)}
    want = {f"conv2d_{d}_{v}" for d in ("forward", "backward_data", "backward_weight") for v in ("v2", "v3")}
    assert set(rows) == want, sorted(rows)
    for name, r in rows.items():
        assert r["fma"] == 512 and r["top"][0] == ["FFMA", 512], (name, r)
        assert r["copy"] >= (128 if "_v2" in name else 32) and r["instructions"] > r["fma"] + r["copy"], (name, r)


def test_airbench_torch_scores_as_gpuconv_does():
    """The baseline's held-out scoring: the same test-time augmentation as gpuconv's (levels 0-2,
    same weights, eval mode); its images come from gpuconv's own reader and split."""
    torch = pytest.importorskip("torch")
    bench = load("bench_airbench")
    from gpuconv import cli
    from gpuconv.data import normalize
    from gpuconv.trainer import tta_logits
    model, _ = cli.build_model("airbench94", width=2)
    tmodel = bench.airbench_torch.build(torch, (2, 8, 8))
    bench.copy_to_torch(torch, model, tmodel)
    model.eval()
    tmodel.eval()
    images, _ = bench.synthetic(6)
    x = normalize(images).astype(np.float32)
    for level in (0, 1, 2):
        want = tta_logits(model, x, level)
        with torch.no_grad():
            got = bench.airbench_torch.tta_logits(torch, tmodel, torch.as_tensor(x), level).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_compare_conv_reads_two_records_cell_by_cell(tmp_path, capsys):
    """compare_conv on two committed H200 records: the default old record is the newest earlier one
    of the same GPU, each cell's speedup is old/new of the fastest variants' milliseconds, and a
    record compared with itself gains nothing."""
    compare_conv = load("compare_conv")
    results = BENCH / "results"
    new, old = results / "conv2d-nvidia-h200-2026-12-04-1813.json", results / "conv2d-nvidia-h200-2026-12-04-1740.json"
    assert compare_conv.previous_record(new, results) == old
    rows = compare_conv.compare(compare_conv.load(new), compare_conv.load(old))
    timed = [r for r in json.loads(new.read_text())["results"] if r.get("ms") is not None]
    cell = ("bf16", "backward_data", "3->64 @32x32")
    row = next(r for r in rows if (r["precision"], r["direction"], r["layer"]) == cell)
    fastest = min((r for r in timed if (r["precision"], r["direction"], r["layer"]) == cell), key=lambda r: r["ms"])
    assert row["ms"] == fastest["ms"] and row["variant"] == fastest["variant"]
    assert row["speedup"] == pytest.approx(row["old_ms"] / row["ms"]) and row["speedup"] > 1.5
    assert len(rows) == len({(r["precision"], r["direction"], r["layer"]) for r in timed})  # one row per cell
    assert compare_conv.main([str(new)]) == 0
    out = capsys.readouterr().out
    assert "bf16  backward_data    6 cells:" in out and "at >= 0.8x cuDNN" in out
    same = compare_conv.compare(compare_conv.load(new), compare_conv.load(new), per_variant=True)
    assert same and all(r["speedup"] == 1.0 for r in same) and len(same) > len(rows)
    # another GPU's record: a warning, and no default partner for a record nobody timed before
    other = json.loads(new.read_text())
    other["environment"] = {**other["environment"], "device": "NVIDIA A100"}
    path = tmp_path / "conv2d-a100.json"
    path.write_text(json.dumps(other))
    assert compare_conv.previous_record(path, results) is None
    assert compare_conv.main([str(path), "--against", str(old)]) == 0
    assert "compare two GPUs" in capsys.readouterr().err
    assert compare_conv.main([str(path)]) == 2
    assert "--other-gpu-ok" in capsys.readouterr().err
    # the battery's fallback on a GPU timed for the first time: the newest earlier record of another GPU
    assert compare_conv.previous_record(path, results, other_gpu_ok=True) == old
    assert compare_conv.main([str(path), "--other-gpu-ok"]) == 0
    assert "compare two GPUs" in capsys.readouterr().err
    # ... but a record of its own GPU, older still, comes first
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    own = json.loads(old.read_text())
    own["environment"] = {**own["environment"], "device": "NVIDIA A100", "date": "2026-01-01T00:00:00+00:00"}
    (mixed / "conv2d-a100-old.json").write_text(json.dumps(own))
    (mixed / old.name).write_text(old.read_text())
    assert compare_conv.previous_record(path, mixed, other_gpu_ok=True) == mixed / "conv2d-a100-old.json"


@pytest.mark.skipif(sys.platform != "linux", reason="bash script")
def test_gpu_battery_leaves_no_process_of_its_output_copier_behind(tmp_path):
    """The loop that copies a running stage's output into $OUT is ended with its stage, and its sleep
    with it: a sleep left running held the battery's stdout open (a caller reading it to the end
    waited up to GPU_RUN_PUBLISH_EVERY_S more per stage) and a copy it was making could land after
    the stage's end, leaving a running_stage.log of a stage that had ended."""
    import signal
    out = tmp_path / "out"
    env = {**battery_environ(), "GPU_RUN_CACHES": str(tmp_path / "none"), "PYTHONPATH": str(REPO), "OUT": str(out),
           "GPUCONV_BENCH_RESULTS": str(tmp_path / "results"),
           "HOME": str(tmp_path / "home"), "STAGES": "tests", "GPU_RUN_PUBLISH_EVERY_S": "300", **_fake_tools(tmp_path)}
    proc = subprocess.Popen(["bash", str(BENCH / "run_gpu.sh")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=REPO, start_new_session=True)
    try:
        assert proc.wait(timeout=120) == 0
        left = []
        for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            # the session: the battery's and every process it started, but for one that has ended and
            # waits to be reaped (a zombie holds nothing open)
            if int(fields[3]) == proc.pid and fields[0] != "Z":
                left.append((stat.parent.name, (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")))
        assert left == [], left
        assert sorted(p.name for p in out.iterdir()) == ["records.tar.gz", "run_gpu.log", "summary.txt"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_each_scripts_help_opens_with_its_first_paragraph(capsys):
    """`--help` describes a script by its docstring's first paragraph, not by its first line
    (half a sentence in most: profile_step's ended "forward and backward, of a"). Each script's
    main() in this process (a python per script took 17 s); one run as a script below."""
    import ast
    for path in sorted(BENCH.glob("*.py")):
        if path.stem in ("common", "airbench_torch"):  # a module; the PyTorch baseline, which needs torch
            continue
        with pytest.raises(SystemExit) as exit_:
            load(path.stem).main(["--help"])
        out = capsys.readouterr().out
        assert exit_.value.code in (0, None), (path.stem, out)
        first = ast.get_docstring(ast.parse(path.read_text()), clean=False).split("\n\n")[0]
        squeezed = re.sub(r"\s+", "", out)  # argparse rewraps, breaking lines at hyphens too
        assert re.sub(r"\s+", "", first) in squeezed, (path.stem, out)
    out = run_script("bench_ops", "--help")
    assert out.returncode == 0 and "usage: bench_ops.py" in out.stdout, out.stderr


def test_the_readmes_commands_take_the_arguments_it_shows(monkeypatch):
    """Every `python benchmarks/NAME.py ...` line of benchmarks/README.md parses with its script's
    own parser (nothing runs: parsing stops there)."""
    import argparse
    import shlex

    class Parsed(Exception):
        pass

    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(parse_args(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    text = (BENCH / "README.md").read_text()
    commands = re.findall(r"^(?:\w+=\S+ )*python benchmarks/(\w+)\.py([^#\n]*)", text, flags=re.M)
    assert len(commands) >= 15, commands
    for name, args in commands:
        try:
            load(name).main(shlex.split(args))
        except Parsed:
            continue
        except SystemExit as exc:
            pytest.fail(f"benchmarks/README.md's `python benchmarks/{name}.py{args}` is refused (exit {exc.code})")
        pytest.fail(f"benchmarks/{name}.py returned without parsing its arguments")


@pytest.mark.slow
def test_bench_models_validates_on_the_simulator_and_saves_its_record(tmp_path):
    """bench_models --device sim --tiny: the model-zoo step of fast and resnet18 (narrow) in fp32 and
    bf16 validated against float64 (PyTorch's mirror where torch is installed, gpuconv's NumPy path
    otherwise) and run, no time claimed; the record names every row."""
    proc = run_script("bench_models", "--device", "sim", "--tiny", "--models", "fast", "resnet18", "--save",
                      env={"GPUCONV_BENCH_RESULTS": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "validation only" in proc.stdout
    (saved,) = tmp_path.glob("*.json")
    assert saved.name.endswith("-host-simulator-gpuconv-hostsim-bench_models.json")
    rec = json.loads(saved.read_text())
    assert rec["benchmark"] == "bench_models" and rec["timed"] is False and rec["validation"]["passed"]
    assert rec["complete"] is True  # (the record saved after the first model, then overwritten: one file)
    names = [c["name"] for c in rec["validation"]["checks"]]
    for model in ("fast", "resnet18"):
        assert f"{model} fp32: loss vs float64" in names and f"{model} bf16: loss vs float64" in names
        assert f"{model} fp32: gradients vs float64 (L2 over every parameter)" in names
    assert [(r["model"], r["precision"], r["batch"]) for r in rec["results"]] == [
        ("fast", "fp32", 2), ("fast", "bf16", 2), ("resnet18", "fp32", 2), ("resnet18", "bf16", 2)]
    assert all(r["ms"] is None and np.isfinite(r["final_loss"]) for r in rec["results"])


def test_bench_models_on_the_cpu_times_the_numpy_path_and_refuses_bf16():
    proc = run_script("bench_models", "--device", "cpu", "--tiny", "--models", "fast", "--no-torch", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout)
    assert rec["timed"] is True and rec["validation"]["passed"]
    (row,) = rec["results"]
    assert row["precision"] == "fp32" and row["ms"] > 0 and row["images_per_s"] > 0 and row["torch_ms"] is None
    proc = run_script("bench_models", "--device", "cpu", "--tiny", "--precisions", "bf16")
    assert proc.returncode == 2 and "fp32 only" in proc.stderr


def test_bench_models_validation_catches_a_wrong_gradient(monkeypatch):
    """A gradient gpuconv got wrong (the largest parameter gradient scaled by 1.5) fails the
    validation: nothing timed."""
    bench = load("bench_models")
    real = bench.amp.training_step

    def wrong(model, *a, **kw):
        out = real(model, *a, **kw)
        p = max(model.parameters(), key=lambda q: float(np.linalg.norm(q.grad)))
        p.grad = p.grad * 1.5
        return out
    monkeypatch.setattr(bench.amp, "training_step", wrong)
    monkeypatch.setattr(bench.common, "torch_module", lambda *a, **kw: None)
    assert bench.main(["--device", "sim", "--tiny", "--models", "fast", "--precisions", "fp32"]) == 1


def test_cs231n_gradcheck_times_the_students_numpy_layers_against_redirect(capsys):
    assert load("bench_cs231n").main(["--gradcheck", "--tiny", "--json"]) == 0  # (in-process: no second start-up)
    rec = json.loads(capsys.readouterr().out)
    assert rec["timed"] is True and rec["mode"] == "gradcheck" and rec["validation"]["passed"]
    assert rec["environment"]["device_kind"] == "cpu"
    names = [c["name"] for c in rec["validation"]["checks"]]
    assert "fc reg=0.0: dW1 vs the student's NumPy" in names
    assert "fc_batchnorm reg=0.0: dgamma1 vs the student's NumPy" in names
    rows = {r["model"]: r for r in rec["results"]}
    assert set(rows) == {"fc", "fc_batchnorm", "all"}
    assert rows["fc"]["calls_of_loss"] == 1 + 2 * (6 * 7 + 7 + 7 * 8 + 8 + 8 * 4 + 4)  # two losses per entry
    assert all(r["numpy_cpu_s"] > 0 and r["gpuconv_cpu_s"] > 0 and r["overhead"] > 0 for r in rows.values())


def test_cs231n_gradcheck_validation_catches_a_wrong_gradient(monkeypatch, capsys):
    """A weight gradient redirect() got wrong (scaled by 1.5) fails the validation: nothing timed."""
    bench = load("bench_cs231n")
    real = bench.gradient_check

    def wrong(pkg, *args):
        loss, grads, errors = real(pkg, *args)
        if pkg.layers.affine_backward.__module__.startswith("gpuconv"):
            grads["W2"] = grads["W2"] * 1.5
        return loss, grads, errors
    monkeypatch.setattr(bench, "gradient_check", wrong)
    assert bench.main(["--gradcheck", "--tiny"]) == 1
    assert "fc reg=0.0: dW2 vs the student's NumPy" in capsys.readouterr().err

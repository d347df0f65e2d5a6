"""Autotuning of the convolutions' "auto" variant (gpuconv.kernels: tuned_variant and the table).

On the simulator the timer is replaced by one that reports chosen times per variant (the
simulator's own speed says nothing about a GPU's), so each test knows which variant must win;
the real timer (CUDA events) runs in the GPU test at the end, and the host timer the simulator
falls back to in one test here.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import gpuconv
from gpuconv import backend as B
from gpuconv import kernels, layout, ops
from gpuconv.gradcheck import reduction_tolerance, within_tolerance
from gpuconv.layers import Conv2d, Flatten, Linear, Sequential
from gpuconv.optim import SGD
from gpuconv.trainer import Trainer

BF16 = np.dtype(ml_dtypes.bfloat16)
FAMILIES = ("conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight")


@pytest.fixture(autouse=True)
def fresh_table():
    kernels.clear_tuned()
    yield
    kernels.clear_tuned()


@pytest.fixture
def fake_timer(monkeypatch):
    """Autotuning on the simulator, timed by ``times[variant]`` (default: tc128w fastest); the
    calls made are in ``fake_timer.calls`` as (variant, the family's runs so far)."""
    monkeypatch.setattr(kernels, "_TUNED_TARGETS", ("cuda", "sim"))
    times = {"tc": 3.0, "tc128": 2.0, "tc128w": 1.0, "tcwg": 4.0, "tcwg256": 5.0, "tcwgn64": 6.0, "tcwgm64": 7.0, "v1": 3.0, "v2": 2.0, "v3": 1.0}
    calls = []

    def measure(run, var, target):
        calls.append(var)
        run(var)
        return times[var]

    monkeypatch.setattr(kernels, "_measure", measure)
    measure.times, measure.calls = times, calls
    return measure


def _conv_case(dtype=BF16, channels_last=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 8, 6, 6)).astype(dtype)
    w = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(dtype)
    return (layout.to_channels_last(x) if channels_last else x), w


def _forward_backward(x, w):
    y, cache = ops.conv2d_forward(x, w, None, stride=1, padding=1)
    dy = np.linspace(-1, 1, y.size).reshape(y.shape).astype(y.dtype)
    dy = layout.like(x, dy)
    dx, dw, _ = ops.conv2d_backward(dy, cache)
    return y, dx, dw


def test_the_fastest_candidate_runs_and_gives_that_variants_bits(fake_timer):
    x, w = _conv_case()
    with gpuconv.default_device("sim"), kernels.autotuning():
        tuned = _forward_backward(x, w)
    table = kernels.tuned_variants()
    assert sorted(k.split("[")[0] for k in table) == sorted(FAMILIES)
    assert set(table.values()) == {"tc128w"}  # the fake timer's fastest tensor-core tile
    # every candidate timed once per family, wgmma's included (they run on the simulator)
    assert sorted(fake_timer.calls) == sorted(3 * list(kernels.TC_VARIANTS))
    key = next(k for k in table if k.startswith("conv2d_forward"))
    assert key == "conv2d_forward[bfloat16] sim N2 C8 H6 W6 K16 F3x3 S1x1 P1x1 nhwc"  # 'sim': the GPU model
    with gpuconv.default_device("sim"), kernels.use_variant(conv2d_forward="tc128w", conv2d_backward_data="tc128w",
                                                            conv2d_backward_weight="tc128w"):
        chosen = _forward_backward(x, w)
    for a, b in zip(tuned, chosen):
        assert np.array_equal(np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16))
        assert layout.is_channels_last(a) == layout.is_channels_last(b)


def test_a_geometry_is_timed_once_and_a_new_one_again(fake_timer):
    x, w = _conv_case()
    with gpuconv.default_device("sim"), kernels.autotuning():
        ops.conv2d_forward(x, w, None, stride=1, padding=1)
        ops.conv2d_forward(x, w, None, stride=1, padding=1)
        n = len(kernels.TC_VARIANTS)  # the candidates of a bfloat16 convolution on the simulator
        assert len(fake_timer.calls) == n
        ops.conv2d_forward(x, w, None, stride=1, padding=0)  # another geometry
        assert len(fake_timer.calls) == 2 * n
        ops.conv2d_forward(layout.to_contiguous(x), w, None, stride=1, padding=1)  # NCHW: another layout
        assert len(fake_timer.calls) == 3 * n
    assert len(kernels.tuned_variants()) == 3
    assert set(kernels.tuning_times()[next(iter(kernels.tuned_variants()))]) == set(kernels.TC_VARIANTS)


def test_a_tuned_geometry_runs_its_choice_without_resolving_it_again(fake_timer, monkeypatch):
    """Once a geometry is tuned its launches take the table's choice from the per-launch memo
    (kernels.resolve, and the run function it is handed, not asked again), with the bits of the
    tuning step; a table loaded over it is followed at the next launch."""
    x, w = _conv_case()
    real, asked = kernels.resolve, []
    with gpuconv.default_device("sim"), kernels.autotuning():
        first = _forward_backward(x, w)
        _forward_backward(x, w)  # (the table's per-launch memo is filled at the first launch after the tuning)
        monkeypatch.setattr(kernels, "resolve", lambda *a, **k: asked.append(a[0]) or real(*a, **k))
        again = _forward_backward(x, w)
        assert asked == []
        kernels.load_tuned_variants({k: "tc" for k in kernels.tuned_variants()})
        with kernels.launch_log() as log:
            _forward_backward(x, w)
    assert sorted(asked) == sorted(FAMILIES)
    for a, b in zip(first, again):
        assert np.array_equal(np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16))
    convs = [n for n in log.names if n.startswith(FAMILIES)]
    assert convs and all(n.endswith("_tc") for n in convs), convs


def test_float32_tunes_the_cuda_core_variants(fake_timer):
    x, w = _conv_case(np.float32, channels_last=False)
    fake_timer.times.update(v1=0.5)  # v1 fastest, but it is a candidate only for a data gradient into few channels
    with gpuconv.default_device("sim"), kernels.autotuning():
        _forward_backward(x, w)
    table = kernels.tuned_variants()
    assert {k.split(" ")[0]: v for k, v in table.items()} == {
        "conv2d_forward[float32]": "v3", "conv2d_backward_data[float32]": "v1", "conv2d_backward_weight[float32]": "v3"}
    assert kernels.tune_candidates("conv2d_backward_data", np.float32, False, "sim", channels=64) == ("v2", "v3")
    assert kernels.tune_candidates("conv2d_forward", np.float32, True, "sim")[:3] == ("tc", "tc128", "tc128w")


def test_off_or_a_chosen_variant_measures_nothing(fake_timer):
    x, w = _conv_case()
    with gpuconv.default_device("sim"):
        ops.conv2d_forward(x, w, None, stride=1, padding=1)  # off by default
        with kernels.autotuning(), kernels.use_variant(conv2d_forward="tc"):
            ops.conv2d_forward(x, w, None, stride=1, padding=1)
        with kernels.autotuning(False):
            ops.conv2d_forward(x, w, None, stride=1, padding=1)
    assert fake_timer.calls == [] and kernels.tuned_variants() == {}


def test_the_environment_switches_it_on(fake_timer, monkeypatch, tmp_path):
    monkeypatch.setenv("GPUCONV_AUTOTUNE", "1")
    assert kernels.autotune_enabled()
    with kernels.autotuning(False):
        assert not kernels.autotune_enabled()
    monkeypatch.setenv("GPUCONV_AUTOTUNE", "0")
    assert not kernels.autotune_enabled()
    monkeypatch.setenv("GPUCONV_AUTOTUNE", "1")  # the trainer's 'auto' follows the variable where it is set
    x, _ = _conv_case()
    with gpuconv.default_device("sim"):
        _trainer("auto", tmp_path).train_step(x, np.arange(2))
    assert len(kernels.tuned_variants()) == 2


def test_a_captured_step_gets_the_channel_rule_and_no_entry(fake_timer, monkeypatch):
    monkeypatch.setattr(kernels, "_capturing", lambda target: True)
    x, w = _conv_case()
    with gpuconv.default_device("sim"), kernels.autotuning(), kernels.launch_log() as log:
        ops.conv2d_forward(x, w, None, stride=1, padding=1)
    assert fake_timer.calls == [] and kernels.tuned_variants() == {}
    assert log.names == ["conv2d_forward_tc"]  # K = 16: the 64x64 tile, as auto_variant says


def test_inside_a_no_sync_block_a_new_geometry_gets_the_rule_and_a_known_one_its_choice(fake_timer):
    x, w = _conv_case()
    with gpuconv.default_device("sim"), kernels.autotuning():
        with kernels.sync_forbidden(), kernels.launch_log() as log:
            ops.conv2d_forward(x, w, None, stride=1, padding=1)
        assert fake_timer.calls == [] and log.names == ["conv2d_forward_tc"]
        ops.conv2d_forward(x, w, None, stride=1, padding=1)  # tuned here
        with kernels.sync_forbidden(), kernels.launch_log() as log:
            ops.conv2d_forward(x, w, None, stride=1, padding=1)
    assert log.names == ["conv2d_forward_tc128w"] and len(fake_timer.calls) == len(kernels.TC_VARIANTS)


def test_the_candidates_launches_stay_out_of_the_launch_log(monkeypatch):
    monkeypatch.setattr(kernels, "_TUNED_TARGETS", ("cuda", "sim"))
    x, w = _conv_case()
    with gpuconv.default_device("sim"), kernels.autotuning(), kernels.launch_log() as log:
        ops.conv2d_forward(x, w, None, stride=1, padding=1)
    (chosen,) = kernels.tuned_variants().values()
    assert log.names == [f"conv2d_forward_{chosen}"]  # 7 candidates x 11 timed launches ran besides


def test_the_simulator_has_no_tuning_unless_asked_and_its_own_timer_works(monkeypatch):
    x, w = _conv_case()
    with gpuconv.default_device("sim"), kernels.autotuning():
        ops.conv2d_forward(x, w, None, stride=1, padding=1)
    assert kernels.tuned_variants() == {}  # the simulator's time says nothing about a GPU's
    monkeypatch.setattr(kernels, "_TUNED_TARGETS", ("cuda", "sim"))
    with gpuconv.default_device("sim"), kernels.autotuning():
        ops.conv2d_forward(x, w, None, stride=1, padding=1)
    (times,) = kernels.tuning_times().values()
    (chosen,) = kernels.tuned_variants().values()
    assert set(times) == set(kernels.TC_VARIANTS) and all(t > 0 for t in times.values())
    assert chosen == min(times, key=times.get)


def test_the_table_round_trips_and_rejects_what_is_not_a_variant():
    kernels.load_tuned_variants({"conv2d_forward[bfloat16] N1 C8 H4 W4 K8 F3x3 S1x1 P1x1 nhwc": "tcwg"})
    assert kernels.tuned_variants() == {"conv2d_forward[bfloat16] N1 C8 H4 W4 K8 F3x3 S1x1 P1x1 nhwc": "tcwg"}
    with pytest.raises(ValueError, match="conv2d_forward has variants .* not 'tc9'"):
        kernels.load_tuned_variants({"conv2d_forward[bfloat16] N1": "tc9"})
    with pytest.raises(ValueError, match="kernel family 'pool' has no variants"):
        kernels.load_tuned_variants({"pool[bfloat16] N1": "v1"})
    with pytest.raises(ValueError, match="'auto' is what the table resolves"):
        kernels.load_tuned_variants({"conv2d_forward[bfloat16] N1": "auto"})
    kernels.load_tuned_variants({"conv2d_backward_weight[tf32] N2": "tc"}, replace=True)
    assert kernels.tuned_variants() == {"conv2d_backward_weight[tf32] N2": "tc"}


def test_a_loaded_choice_is_what_runs(fake_timer):
    x, w = _conv_case()
    kernels.load_tuned_variants({"conv2d_forward[bfloat16] sim N2 C8 H6 W6 K16 F3x3 S1x1 P1x1 nhwc": "tcwg256"})
    with gpuconv.default_device("sim"), kernels.autotuning(), kernels.launch_log() as log:
        ops.conv2d_forward(x, w, None, stride=1, padding=1)
    assert fake_timer.calls == [] and log.names == ["conv2d_forward_tcwg256"]


def _trainer(autotune, tmp_path):
    model = Sequential(Conv2d(8, 16, 3, padding=1, seed=0), Flatten(), Linear(16 * 36, 10, seed=1))
    return Trainer(model, SGD(model.parameters(), lr=0.01), out_dir=tmp_path, progress=False, precision="bf16",
                   autotune=autotune)


def test_the_trainer_tunes_on_request_and_its_checkpoint_carries_the_table(fake_timer, tmp_path):
    x, _ = _conv_case()
    y = np.arange(2) % 10
    with gpuconv.default_device("sim"):
        trainer = _trainer("auto", tmp_path)
        trainer.train_step(x, y)
        assert kernels.tuned_variants() == {}  # 'auto': on a GPU only ...
        with kernels.autotuning():
            trainer.train_step(x, y)
        assert len(kernels.tuned_variants()) == 2  # ... unless an enclosing block says otherwise
        kernels.clear_tuned()
        trainer = _trainer(True, tmp_path)
        trainer.train_step(x, y)
        table = kernels.tuned_variants()
        assert len(table) == 2  # the forward and the weight gradient (the input needs no gradient)
        trainer._flush()
        trainer.save_checkpoint()
        kernels.clear_tuned()
        fake_timer.calls.clear()
        resumed = _trainer(True, tmp_path)
        resumed.load_checkpoint()
        assert kernels.tuned_variants() == table
        with kernels.launch_log() as log:
            resumed.train_step(x, y)
    assert fake_timer.calls == []  # the loaded choices run: nothing timed again
    assert [n for n in log.names if n.startswith("conv2d_forward")] == ["conv2d_forward_tc128w"]
    with pytest.raises(ValueError, match="autotune='yes': use 'auto'"):
        _trainer("yes", tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not B.cuda_available(), reason=f"no GPU: {B.cuda_status()}")
def test_on_a_gpu_the_events_pick_a_candidate_that_computes_the_same_convolution():
    cp = B.cupy_module()
    x, w = _conv_case(seed=3)
    xd, wd = cp.asarray(x), cp.asarray(w)
    xd = layout.to_channels_last(xd)
    with kernels.autotuning(), kernels.launch_log() as log:
        y = ops.conv2d_forward(xd, wd, None, stride=1, padding=1)[0]
    (key, chosen), = kernels.tuned_variants().items()
    times = kernels.tuning_times()[key]
    assert chosen in kernels.tune_candidates("conv2d_forward", BF16, False, "cuda", 0) and chosen == min(times, key=times.get)
    assert all(0 < t < 1e3 for t in times.values()) and log.names == [f"conv2d_forward_{chosen}"]
    assert key.split(" ")[1].startswith("NVIDIA")  # the GPU model in the key
    # the tuned variant computes the convolution: within the reduction bound of the exact one
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    want = ops.conv2d_forward(x64, w64, None, stride=1, padding=1)[0]
    mag = ops.conv2d_forward(np.abs(x64), np.abs(w64), None, stride=1, padding=1)[0]
    tol = 2.0 * reduction_tolerance(mag, want, 8 * 9, BF16)
    ok, worst = within_tolerance(B.asnumpy(y), want, tol)
    assert ok, worst


def test_a_candidate_that_fails_is_left_out_with_a_warning(fake_timer, monkeypatch):
    """A candidate that raises while timed (a kernel that cannot launch or compile on this GPU) is
    dropped with a warning naming it, the others are timed and the fastest of them runs; its error
    is in the tuning's record. An error that leaves the device unusable propagates, and a geometry
    whose every candidate fails raises the first one's error (an out-of-memory stays one, for the
    Trainer's advice), each named in its warning."""
    real = fake_timer

    def measure(run, var, target):
        if var in ("tc128w", "tcwg"):
            raise RuntimeError(f"{var} cannot launch here")
        return real(run, var, target)

    monkeypatch.setattr(kernels, "_measure", measure)
    x, w = _conv_case()
    with gpuconv.default_device("sim"), kernels.autotuning():
        with pytest.warns(RuntimeWarning) as warned:
            ops.conv2d_forward(x, w, None, stride=1, padding=1)
    assert [str(m.message).split(": ", 1)[1] for m in warned] == [
        f"variant {v!r} failed (RuntimeError: {v} cannot launch here); it is left out" for v in ("tc128w", "tcwg")]
    (key, chosen), = kernels.tuned_variants().items()
    assert chosen == "tc128"  # the fastest of those that ran (the fake timer's tc128w is out)
    times = kernels.tuning_times()[key]
    assert times["tcwg"] == "failed: RuntimeError: tcwg cannot launch here" and times["tc128"] == 2.0e3

    kernels.clear_tuned()
    monkeypatch.setattr(kernels, "_dropped", lambda *a: False)  # the device is gone
    with gpuconv.default_device("sim"), kernels.autotuning(), pytest.raises(RuntimeError, match="tc128w cannot"):
        ops.conv2d_forward(x, w, None, stride=1, padding=1)
    assert kernels.tuned_variants() == {}

    kernels.clear_tuned()
    monkeypatch.setattr(kernels, "_dropped", lambda *a: True)
    monkeypatch.setattr(kernels, "_measure", lambda run, var, target: measure(run, "tcwg", target))
    with gpuconv.default_device("sim"), kernels.autotuning(), pytest.raises(RuntimeError, match="tcwg cannot"):
        ops.conv2d_forward(x, w, None, stride=1, padding=1)

    def out_of_memory(run, var, target):
        raise MemoryError(f"out of memory timing {var}")

    monkeypatch.setattr(kernels, "_measure", out_of_memory)
    with gpuconv.default_device("sim"), kernels.autotuning(), pytest.raises(MemoryError, match="timing tc$"):
        ops.conv2d_forward(x, w, None, stride=1, padding=1)
    assert kernels.tuned_variants() == {}


@pytest.mark.parametrize("value, on", [("1", True), ("true", True), ("On", True), ("0", False), ("false", False),
                                       ("no", False), ("", False)])
def test_the_environment_switch_reads_yes_and_no(monkeypatch, value, on):
    monkeypatch.setenv("GPUCONV_AUTOTUNE", value)
    assert kernels.autotune_enabled() is on


@pytest.mark.parametrize("value", ["off", "no", 0, 1])
def test_the_python_switches_take_true_or_false_only(value):
    """set_autotune('off') turned autotuning on (bool('off') is True); a word or a number is refused."""
    with pytest.raises(TypeError, match=r"set_autotune\(enabled\) must be True or False, got .*None: back to"):
        kernels.set_autotune(value)
    with pytest.raises(TypeError, match=r"autotuning\(enabled\) must be True or False, got "):
        with kernels.autotuning(value):
            pass
    assert kernels.autotune_enabled() is False


def test_an_unreadable_environment_switch_is_an_error(monkeypatch):
    """... named when read, and by a Trainer when it is built (not at its first step)."""
    monkeypatch.setenv("GPUCONV_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match=r"GPUCONV_AUTOTUNE='maybe': give 1 \(or true, yes, on\)"):
        kernels.autotune_enabled()
    model = Sequential(Conv2d(3, 4, 3, padding=1), Flatten(), Linear(4 * 4 * 4, 2))
    with pytest.raises(ValueError, match=r"GPUCONV_AUTOTUNE='maybe'"):
        Trainer(model, SGD(model.parameters(), lr=0.1), progress=False)


def test_the_wgmma_tiles_can_be_switched_off_on_a_gpu(monkeypatch):
    """On a Hopper GPU the wgmma tiles are candidates; GPUCONV_WGMMA=0 leaves them out (and a
    launch asking for one runs tc128), for a GPU or driver where they fail; the simulator keeps
    them, as it keeps every kernel."""
    from gpuconv.ops import _launch_conv2d_tc as tc
    monkeypatch.setattr(kernels, "_arch_specific_build", lambda device: True)  # as on an H100/H200
    monkeypatch.setattr(kernels, "_compute_capability", lambda device: 90)
    monkeypatch.delenv("GPUCONV_WGMMA", raising=False)  # (a battery that switched them off runs this too)
    assert kernels.tune_candidates("conv2d_forward", BF16, False, "cuda", 0)[-4:] == ("tcwg", "tcwg256", "tcwgn64",
                                                                                     "tcwgm64")
    monkeypatch.setenv("GPUCONV_WGMMA", "0")
    assert kernels.tune_candidates("conv2d_forward", BF16, False, "cuda", 0) == ("tc", "tc128", "tc128w")
    assert tc.engine("tcwg256", BF16, False, "cuda", 0) == "tc128" and tc.engine("tcwgm64", BF16, False, "cuda", 0) == "tc"
    assert kernels.wgmma_available("sim") and tc.engine("tcwg", BF16, False, "sim", None) == "tcwg"


def test_a_gpu_without_tensor_cores_runs_the_cuda_core_tiles(monkeypatch):
    """bfloat16 and TF32 mma.sync need compute capability 8.0, float16's 7.5: on a T4 (7.5) a
    bfloat16 or TF32 convolution, asked for a tensor-core tile or "auto", runs v2/v3 (the same
    precision rule), autotuning times those, the linear layer takes the 1x1 convolution, and
    precompile builds no bfloat16 or TF32 tensor-core file (sm_75 has no such mma); its float16
    runs on the tensor cores (tc, tc128; a wgmma tile as its mma.sync fallback)."""
    from gpuconv.ops import _launch_linear
    monkeypatch.setattr(kernels, "_compute_capability", lambda device: 75)
    monkeypatch.setattr(kernels, "_every_gpu_has_tensor_cores", lambda min_cc: min_cc <= 75)
    assert not kernels.tensor_cores_available("cuda", 0) and kernels.tensor_cores_available("sim")
    assert not kernels.tensor_cores_available("cuda", 0, BF16) and kernels.tensor_cores_available("cuda", 0, np.float16)
    assert kernels.tune_candidates("conv2d_forward", BF16, False, "cuda", 0) == ("v2", "v3")
    assert kernels.tune_candidates("conv2d_forward", np.float32, True, "cuda", 0) == ("v2", "v3")
    assert kernels.tune_candidates("conv2d_forward", np.float16, False, "cuda", 0) == ("tc", "tc128", "tc128w")
    launch = lambda: (0, ())  # noqa: E731  (device 0, no geometry: nothing is tuned)
    for dtype, tf32 in ((BF16, False), (np.float32, True)):
        assert kernels.resolve("conv2d_forward", dtype, tf32, 256, "cuda", launch=launch) == "v3"
        assert kernels.resolve("conv2d_backward_data", dtype, tf32, 3, "cuda", launch=launch) == "v1"
        with kernels.use_variant(conv2d_forward="tc128"):
            assert kernels.resolve("conv2d_forward", dtype, tf32, 256, "cuda", launch=launch) == "v3"
            assert kernels.resolve("conv2d_forward", dtype, tf32, 256, "sim", launch=launch) == "tc128"
    assert kernels.resolve("conv2d_forward", np.float16, False, 256, "cuda", launch=launch) == "tc128"
    assert kernels.resolve("conv2d_backward_data", np.float16, False, 3, "cuda", launch=launch) == "tc"
    # autotuning on: where it may not time (a no-sync block, a graph capture) its rule falls back too
    monkeypatch.setattr(kernels, "autotune_enabled", lambda default=False: True)
    monkeypatch.setattr(kernels, "_device_model", lambda target, device: "Tesla-T4")
    with kernels.sync_forbidden():
        for dtype, tf32 in ((BF16, False), (np.float32, True)):
            geometry = ((2, 256, 8, 8), (256, 256, 3, 3), (1, 1), (1, 1), True)
            assert kernels.resolve("conv2d_forward", dtype, tf32, 256, "cuda", launch=lambda: (0, geometry),
                                   run=lambda var: pytest.fail("timed")) == "v3"
    monkeypatch.setattr(kernels, "array_device", lambda arrays: 0)
    x, w = np.zeros((4, 8), BF16), np.zeros((2, 8), BF16)
    assert not _launch_linear._on_gemm_tc(x, w, "cuda") and _launch_linear._on_gemm_tc(x, w, "sim")
    assert _launch_linear._on_gemm_tc(x.astype(np.float16), w.astype(np.float16), "cuda")
    monkeypatch.setattr(kernels, "_cached_binary", lambda src, f, dt, arch, where="", tf32=False: (None, None))
    built = {r["file"] for r in kernels.precompile(arch="sm_75", dtypes=[BF16])}
    assert built and not built & set(kernels.TENSOR_CORE_FILES) and "conv2d" in built
    assert set(kernels.TENSOR_CORE_FILES) == {"conv2d_tc", "gemm_tc"}
    builds = {(r["file"], r["build"]) for r in kernels.precompile(arch="sm_75", dtypes=[np.float16, np.float32])}
    assert {("conv2d_tc", "float16"), ("gemm_tc", "float16"), ("conv2d", "float+tf32")} <= builds
    assert not {b for b in builds if b[0] in kernels.TENSOR_CORE_FILES and b[1] == "float+tf32"}
    assert set(kernels.TENSOR_CORE_FILES) <= {r["file"] for r in kernels.precompile(arch="sm_80", dtypes=[BF16])}
    # Where every GPU has them (the common case) a launch does not look its device up
    monkeypatch.setattr(kernels, "_every_gpu_has_tensor_cores", lambda min_cc: True)
    with kernels.use_variant(conv2d_forward="tc128"):
        assert kernels.resolve("conv2d_forward", BF16, False, 256, "cuda", launch=lambda: pytest.fail("looked up")) == "tc128"


def test_a_candidate_with_wrong_results_is_left_out_however_fast(fake_timer, monkeypatch):
    """A tile that computes wrong sums on some GPU (never run there before, say) must not win on
    speed: each candidate's untimed result is checked against the first candidate's, and one that
    differs by more than a rounding is left out with a warning and its difference on record."""
    from gpuconv.ops import _launch_conv2d_tc as tc
    real = tc.forward

    def off_by_a_bit(x, w, b, stride, padding, tf32, relu, *, target, variant="tc", **kwargs):
        y = real(x, w, b, stride, padding, tf32, relu, target=target, variant=variant, **kwargs)
        if variant == "tcwg":
            y[0, 0, 0, 0] += 1.0  # one output of a few hundred, wrong
        return y

    monkeypatch.setattr(tc, "forward", off_by_a_bit)
    fake_timer.times["tcwg"] = 0.5  # the fastest by far
    x, w = _conv_case()
    with gpuconv.default_device("sim"), kernels.autotuning(), pytest.warns(RuntimeWarning, match="'tcwg' differs"):
        ops.conv2d_forward(x, w, None, stride=1, padding=1)
    (key, chosen), = kernels.tuned_variants().items()
    assert chosen == "tc128w" and "tcwg" not in fake_timer.calls  # the next fastest; tcwg never timed
    assert kernels.tuning_times()[key]["tcwg"].startswith("wrong: largest difference")


def test_results_agree_up_to_a_rounding_and_nan_where_nan():
    ref = np.array([[1.0, -2.0, np.nan], [np.inf, 0.5, 3.0]], np.float32)
    assert kernels._disagreement(ref.copy(), ref) is None
    near = ref.copy()
    near[1, 2] += 3.0 * 2.0 ** -8  # a bfloat16 rounding of the largest value
    assert kernels._disagreement(near, ref) is None
    far = ref.copy()
    far[0, 0] = 1.2
    assert "largest difference 0.2" in kernels._disagreement(far, ref)
    nan_lost = ref.copy()
    nan_lost[0, 2] = 0.0
    assert kernels._disagreement(nan_lost, ref) is not None


def test_the_comparison_goes_slice_by_slice(monkeypatch):
    monkeypatch.setattr(kernels, "AGREE_CHUNK", 8)  # 2 images of 4 elements a slice
    ref = np.arange(5 * 4, dtype=np.float32).reshape(5, 2, 2)
    assert kernels._disagreement(ref.copy(), ref) is None
    late = ref.copy()
    late[4, 1, 1] = -1.0  # in the last, partial slice
    assert "largest difference 20" in kernels._disagreement(late, ref)

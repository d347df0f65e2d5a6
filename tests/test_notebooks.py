"""The notebooks run top to bottom, with the small settings, and draw their figures.

Each notebook is executed with nbclient in a fresh ``python3`` kernel (jupyter_client starts it
with this interpreter), from ``notebooks/`` as the working directory. Figures, training runs and
benchmark records are redirected into the test's temporary directory through the notebooks'
environment variables (``GPUCONV_NB_FIGURES``, ``GPUCONV_NB_RUNS``, ``GPUCONV_BENCH_RESULTS``), so
a test run never rewrites files in the checkout. ``GPUCONV_NB_FULL`` is cleared: CI runs the
small versions (about a minute or two for all four on a CPU). 02 and 03 also run with the kernel
interrupted in their training cell, as a user stops a run, and the cells after it must still run.
"""
from __future__ import annotations

import json

import pytest

nbformat = pytest.importorskip("nbformat")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

from conftest import REPO

NB_DIR = REPO / "notebooks"
FIGURES = {
    "01_quickstart.ipynb": ["01_output_size.png", "01_conv_relu_pool.png"],
    "02_train_cifar10.ipynb": ["02_curves.png", "02_confusion.png", "02_predictions.png"],
    "03_inside_the_convnet.ipynb": ["03_filters.png", "03_activations.png", "03_top5.png"],
    "04_kernels.ipynb": ["04_im2col_memory.png", "04_variants.png"],
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bench_record(layer_rows, date="2026-01-01T12:00:00+00:00"):
    """A bench_conv2d record: per layer and direction, v1 and v2 in fp32 NCHW (v2 the faster) and tc
    in bf16 channels_last, each against cuDNN in its own precision."""
    rows = []
    for layer in layer_rows:
        for direction in ("forward", "backward_data", "backward_weight"):
            for precision, layout, variant, ms, torch_ms in (("fp32", "nchw", "v1", 2.0, 0.8),
                                                             ("fp32", "nchw", "v2", 1.0, 0.8),
                                                             ("bf16", "channels_last", "tc", 0.25, 0.2)):
                rows.append({"precision": precision, "layout": layout, "layer": layer, "batch": 512,
                             "direction": direction, "variant": variant, "ms": ms, "tflops": 9.0 / ms,
                             "torch_ms": torch_ms, "torch_tflops": 9.0 / torch_ms, "speed_vs_torch": torch_ms / ms})
    return {"benchmark": "conv2d", "environment": {"device": "Test GPU", "date": date}, "results": rows}


def _run(name, tmp_path, monkeypatch, bench_records=None, data=None, stop_at_step=None):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{name} is stored with outputs: clear them before committing (outputs belong to a run)")
    if stop_at_step is not None:  # the kernel interrupted (its stop button: SIGINT) during the training cell
        train = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "trainer.fit(" in c.source)
        nb.cells[train].metadata.setdefault("tags", []).append("raises-exception")
        nb.cells.insert(train, nbformat.v4.new_code_cell(
            "import os, signal\nfrom gpuconv.trainer import Trainer\n_step = Trainer.train_step\n"
            "def _interrupted(self, x, y):\n    _step(self, x, y)\n"
            f"    if self.step == {stop_at_step}:\n        os.kill(os.getpid(), signal.SIGINT)\n"
            "Trainer.train_step = _interrupted"))
    figures = tmp_path / "figures"
    bench = tmp_path / "bench"
    bench.mkdir()
    for i, record in enumerate(bench_records or []):
        (bench / f"conv2d-test-gpu-2026-01-0{i + 1}.json").write_text(json.dumps(record))
    monkeypatch.delenv("GPUCONV_NB_FULL", raising=False)
    monkeypatch.delenv("GPUCONV_DEVICE", raising=False)
    if data is not None:
        monkeypatch.setenv("GPUCONV_DATA", str(data))   # the test data set, wherever conftest found it
    monkeypatch.setenv("GPUCONV_NB_FIGURES", str(figures))
    monkeypatch.setenv("GPUCONV_NB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("GPUCONV_BENCH_RESULTS", str(bench))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NB_DIR)}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    if stop_at_step is not None:
        assert [o.ename for o in errors] == ["TrainingInterrupted"], errors
        errors = []
    assert not errors, errors
    return nb, figures


def _assert_figures(nb, figures, names):
    for fname in names:
        path = figures / fname
        assert path.is_file(), f"{fname} was not saved into {figures}"
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, f"{fname} is not a real PNG figure"
    inline = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert inline >= len(names), f"only {inline} figures were shown inline, {len(names)} expected"


def _text(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_train_cifar10.ipynb", "03_inside_the_convnet.ipynb"])
def test_notebook_runs_and_draws(name, tmp_path, monkeypatch, subset_dir):
    nb, figures = _run(name, tmp_path, monkeypatch, data=subset_dir)
    _assert_figures(nb, figures, FIGURES[name])
    if name == "02_train_cifar10.ipynb":
        text = _text(nb)
        assert "epoch 1:" in text and "final validation accuracy" in text
        assert (tmp_path / "runs" / "02_train_cifar10" / "metrics.jsonl").is_file()
        # its Trainer records the network's constructor: load_model (and `gpuconv predict`) rebuild it
        import numpy as np

        import gpuconv
        model = gpuconv.load_model(tmp_path / "runs" / "02_train_cifar10" / "best.npz")
        assert len(model.net) == 5 and model.predict(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 10)


@pytest.mark.parametrize("name", ["02_train_cifar10.ipynb", "03_inside_the_convnet.ipynb"])
def test_the_cells_after_an_interrupted_training_run(name, tmp_path, monkeypatch, subset_dir):
    """The kernel interrupted in the first epoch of the training cell: the cells below it run and
    describe the steps that were trained, not a finished run."""
    nb, figures = _run(name, tmp_path, monkeypatch, data=subset_dir, stop_at_step=3)
    _assert_figures(nb, figures, FIGURES[name])
    text = _text(nb)
    stops = [o.evalue for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert len(stops) == 1 and stops[0].startswith("training interrupted at epoch 1, batch 3 (step 3)"), stops
    if name == "02_train_cifar10.ipynb":
        assert "no epoch finished: training stopped at step 3; trainer.fit(...) continues it" in text
        assert "final validation accuracy" not in text


def test_kernels_notebook_without_benchmark_records(tmp_path, monkeypatch):
    nb, figures = _run("04_kernels.ipynb", tmp_path, monkeypatch)
    _assert_figures(nb, figures, FIGURES["04_kernels.ipynb"])
    text = _text(nb)
    assert "no conv2d benchmark recorded yet" in text
    assert "max rel. error vs float64 NumPy" in text
    assert not (figures / "04_benchmark.png").exists()


def test_kernels_notebook_plots_benchmark_records(tmp_path, monkeypatch):
    # The latest record by its date, whatever the file names sort as (the second file is the older run)
    latest = _bench_record(["3->64 @32x32", "64->128 @32x32"], date="2026-01-02T09:00:00+00:00")
    older = _bench_record(["3->64 @32x32"], date="2026-01-01T18:00:00+00:00")
    nb, figures = _run("04_kernels.ipynb", tmp_path, monkeypatch, bench_records=[latest, older])
    _assert_figures(nb, figures, FIGURES["04_kernels.ipynb"] + ["04_benchmark.png"])
    text = _text(nb)
    assert "Test GPU: conv2d-test-gpu-2026-01-01.json (2026-01-02T09:00:00+00:00)" in text
    assert "fp32      nchw          forward          64->128 @32x32   v2          1.000  0.80x" in text  # the fastest
    assert "bf16      channels_last backward_weight  64->128 @32x32   tc          0.250  0.80x" in text
    assert " v1 " not in text.split("gpuconv's fastest variant per cell")[1]


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_the_setup_cell_takes_the_device_from_gpuconv_device(name, tmp_path, monkeypatch):
    """$GPUCONV_DEVICE, the default device's variable, picks a notebook's device ('auto' when unset)."""
    nb = nbformat.read(NB_DIR / name, as_version=4)
    setup = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "set_default_device" in c.source)
    nb.cells = nb.cells[:setup + 1]
    monkeypatch.setenv("GPUCONV_DEVICE", "sim")
    monkeypatch.setenv("GPUCONV_NB_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}).execute()
    assert "| device: sim |" in _text(nb)


def test_the_notebooks_say_what_precision_auto_chooses_on_a_t4():
    """Where a notebook explains precision 'auto' (bf16 on bfloat16 tensor cores), it names the T4's
    fp16 too: Colab's free GPU is a T4, where 'auto' trains in fp16 with the loss scaler."""
    for path in sorted(NB_DIR.glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            text = "".join(cell["source"])
            if "auto" in text and "bf16 mixed precision" in text:
                assert "fp16" in text and "T4" in text, f"{path.name}: {text[:300]}"


def _cell(name, marker):
    cells = [c.source for c in nbformat.read(NB_DIR / name, as_version=4).cells
             if c.cell_type == "code" and marker in c.source]
    assert len(cells) == 1, f"{name}: {len(cells)} code cells hold {marker!r}"
    return cells[0]


@pytest.mark.parametrize("stopped_at, epochs_done, expected", [
    (3, 0, "no epoch finished: training stopped at step 3; trainer.fit(...) continues it"),
    (40, 1, "validation accuracy after epoch 1 of 4: 0.300; training stopped at step 40; trainer.fit(...) continues it"),
    (128, 4, "final validation accuracy: 0.600 after 8 s (500 training images/s), epoch 4 of 4"),
], ids=["stopped in the first epoch", "stopped in the second epoch", "finished"])
def test_the_curves_cell_says_whether_training_finished(stopped_at, epochs_done, expected, tmp_path, capsys):
    """02's curves cell, run on the metrics of a training cell stopped in the first epoch, in a later
    one, or finished: only a finished run's last validation result reads as the final one. (The
    cell runs here in-process on a stand-in trainer and pyplot: no kernel, no training.)"""
    from types import SimpleNamespace
    from unittest import mock

    records = [{"kind": "interval", "step": s, "train_loss": 2.0, "train_acc": 0.2} for s in range(8, stopped_at + 1, 8)]
    records += [{"kind": "epoch", "epoch": e, "step": 32 * e, "train_loss": 2.0, "train_acc": 0.2, "val_loss": 1.9,
                 "val_acc": 0.2 + 0.1 * e, "elapsed_s": 2.0 * e, "images_per_s": 500.0} for e in range(1, epochs_done + 1)]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    plt = mock.MagicMock()
    plt.subplots.return_value = (mock.MagicMock(), (mock.MagicMock(), mock.MagicMock()))
    exec(_cell("02_train_cifar10.ipynb", "final validation accuracy"), {
        "trainer": SimpleNamespace(metrics_path=metrics, step=stopped_at), "train_loader": range(32),
        "hp": {"epochs": 4}, "plt": plt, "save": lambda fig, name: None})
    assert capsys.readouterr().out.strip() == expected


def test_the_quickstart_compares_the_simulator_with_numpy_under_the_sim_default(capsys):
    """01's device cell with the default device 'sim' (as $GPUCONV_DEVICE=sim makes it): its NumPy
    reference still runs NumPy, so 'max |sim - NumPy|' compares the kernels with the reference and
    not the simulator with itself. The only launches are those of the simulated block."""
    import numpy as np

    import gpuconv
    from gpuconv import kernels, ops
    rng = np.random.default_rng(0)
    ns = {"gpuconv": gpuconv, "np": np, "ops": ops, "x": rng.random((1, 3, 32, 32), dtype=np.float32),
          "w": rng.standard_normal((2, 3, 3, 3)).astype(np.float32)}
    with gpuconv.default_device("sim"), kernels.launch_log() as everything:
        exec(_cell("01_quickstart.ipynb", "max |sim - NumPy|"), ns)
    assert "the simulator ran the CUDA kernels" in capsys.readouterr().out
    assert everything.names == ns["launches"].names and len(everything.names) == 3, everything.names
    with gpuconv.default_device("cpu"):
        assert np.array_equal(ns["reference"], ns["features"](ns["x"], ns["w"]))


def test_the_kernels_notebook_takes_its_reference_from_numpy_under_the_sim_default(monkeypatch):
    """04's float64 reference (the 'max rel. error vs float64 NumPy' of each variant) is NumPy's
    with the default device 'sim' too: no kernel runs in that cell."""
    import numpy as np

    import gpuconv
    from gpuconv import kernels, ops
    monkeypatch.setattr(gpuconv, "cuda_available", lambda: False)  # the cell's small CPU shapes
    ns = {"gpuconv": gpuconv, "np": np, "ops": ops, "FULL": False}
    with gpuconv.default_device("sim"), kernels.launch_log() as log:
        exec(_cell("04_kernels.ipynb", "y_ref, cache_ref = "), ns)
    assert log.names == [] and ns["y_ref"].dtype == np.float64 and ns["dw_ref"].shape == (16, 8, 3, 3)


def test_the_training_notebook_builds_the_model_its_hyperparameters_name(capsys):
    """02's hyperparameter cell: hp["model"] names the network new_run() builds (a user who sets
    "three_layer_convnet" there trains that one, not the seed net the printed hp would deny)."""
    import numpy as np

    import gpuconv
    from gpuconv.data import DeviceLoader
    from gpuconv.data.cifar10 import Split
    split = Split(np.zeros((64, 3, 32, 32), np.uint8), np.zeros(64, np.int64))
    ns = {"FULL": False, "train": split, "val": split, "device": gpuconv.Device("cpu"), "DeviceLoader": DeviceLoader}
    exec(_cell("02_train_cifar10.ipynb", "def new_run():"), ns)
    assert "'model': 'seed_net'" in capsys.readouterr().out and len(ns["model"]) == 5   # CONV-RELU-POOL-FLATTEN-FC
    ns["hp"]["model"] = "three_layer_convnet"
    model, optimizer, _ = ns["new_run"]()
    assert tuple(model[0].weight.shape) == (32, 3, 7, 7) and len(optimizer.param_groups[0]["params"]) == 6

"""Training steps replayed as CUDA graphs (gpuconv.graphs, Trainer(cuda_graph=True)): the same
parameters as the eager steps, bit for bit, with a schedule changing the learning rate every
step, two parameter groups (or a Muon/SGD chain with a group on its own schedule), lookahead and
a parameter frozen between epochs. On 'cuda' the
graph is captured and replayed; on 'sim' and the CPU the same path runs the step through the
graph's input buffers and learning-rate writes."""
from __future__ import annotations

import contextlib
import contextvars
import copy
import gc
import pickle
import tracemalloc
import types
import weakref

import numpy as np
import pytest

import gpuconv
from gpuconv import backend as B
from gpuconv import kernels
from gpuconv.data import DeviceLoader
from gpuconv.graphs import StepGraph
from gpuconv.layers import BatchNorm2d, Conv2d, Dropout, Flatten, GELU, Linear, LPPool2d, MaxPool2d, Scale, Sequential
from gpuconv.lookahead import Lookahead
from gpuconv.optim import SGD, Adam, AdamW, Chain, Muon, OneCycleLR
from gpuconv.trainer import Trainer, TrainingInterrupted
from test_trainer import SigintAt, assert_same_state

# the GPU cases capture and replay on CuPy's streams, graphs and memory pools: not with CuPy faked
pytestmark = pytest.mark.real_cupy("streams, CUDA graphs, memory pools and device properties")

DEVICES = [pytest.param("sim"),
           pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not B.cuda_available(),
                                                                           reason=f"no GPU: {B.cuda_status()}")])]


def _model(dropout=False):
    """``dropout``: with a Dropout layer before the classifier (a mask per step)."""
    head = [Dropout(0.25, seed=2)] if dropout else []
    return Sequential(Conv2d(3, 4, 3, padding=1, seed=0), BatchNorm2d(4), GELU(), MaxPool2d(2), Flatten(),
                      *head, Linear(64, 10, seed=1))


def _run(device, cuda_graph, precision="fp32", epochs=2, optimizer="sgd", dropout=False, loss_scaler=None,
         model_hook=None):
    """Two epochs of 8 steps; the first conv's bias frozen from epoch 1 (the step changes).
    ``optimizer`` 'muon': airbench94_muon's kind of pair, Muon on the conv filter and SGD on the
    rest, the conv bias in a group on a schedule of its own; 'adam'/'adamw': Adam/AdamW with the
    'sgd' case's two groups (their step count on the device). ``dropout``: the model has a Dropout.
    ``loss_scaler``: fp16's (default: a fresh LossScaler). ``model_hook``: called with the model
    before the optimizer is built."""
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (40, 3, 8, 8), dtype=np.uint8), rng.integers(0, 10, 40)
    with gpuconv.default_device(device):
        model = _model(dropout)
        if model_hook is not None:
            model_hook(model)
        params = model.parameters()
        if optimizer == "muon":
            sgd = SGD([{"params": [params[1]], "lr": 0.2}, {"params": params[2:]}], lr=0.05, momentum=0.85,
                      nesterov=True, weight_decay=5e-4)
            opt = Chain(Muon([params[0]], lr=0.1, momentum=0.6), sgd)
        elif optimizer in ("adam", "adamw"):
            opt = (Adam if optimizer == "adam" else AdamW)(
                [{"params": params[:2], "lr": 0.02, "weight_decay": 0.0}, {"params": params[2:]}], lr=0.01,
                betas=(0.8, 0.95), weight_decay=5e-2)
        else:
            opt = SGD([{"params": params[:2], "lr": 0.2, "weight_decay": 0.0}, {"params": params[2:]}], lr=0.05,
                      momentum=0.9, nesterov=True, weight_decay=5e-4)
        sched = OneCycleLR(opt, max_lr=0.01 if optimizer.startswith("adam") else 0.05, total_steps=8 * epochs)
        if optimizer == "muon":
            sched.own_schedule([params[1]], lambda step: max(0.0, 1 - step / 8))
        loader = DeviceLoader(imgs, labels, 5, seed=0, augment=True, channels_last=precision != "fp32")

        def freeze(epoch):
            model[0].bias.requires_grad = epoch == 0

        trainer = Trainer(model, opt, sched, log_every=4, progress=False, precision=precision,
                          lookahead=Lookahead(model, every=3), total_steps=8 * epochs, epoch_start=freeze,
                          cuda_graph=cuda_graph, loss_scaler=loss_scaler)
        trainer.fit(loader, epochs)
        return {n: B.asnumpy(p.data).copy() for n, p in model.named_parameters()}, trainer


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("optimizer", ["sgd", "muon", "adam", "adamw"])
def test_graph_steps_give_the_eager_steps_parameters_bit_for_bit(device, precision, optimizer):
    eager, _ = _run(device, False, precision, optimizer=optimizer)
    graphed, trainer = _run(device, True, precision, optimizer=optimizer)
    assert eager.keys() == graphed.keys()
    for name in eager:
        np.testing.assert_array_equal(graphed[name], eager[name], err_msg=name)
    graph = trainer._graph
    assert graph._inputs is not None  # the steps after each epoch's first ran through the graph's buffers
    if device == "cuda":
        assert graph.captures == 2 and graph.replays == 2 * 7  # captured anew after the epoch's callback


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_graphed_steps_back_off_and_grow_the_loss_scale_as_the_eager_steps(device, monkeypatch):
    """fp16 under a graph: the loss scale and the skip of an overflowed step are decided on the
    device, and the scaler writes its scale and clean-step count into the arrays the captured
    step read (new arrays would leave every replay the capture's scale). A start too large
    overflows the first steps (skipped, the scale halved each time), a short growth interval grows
    it again, and it overflows again: the graphed run takes the eager run's scales step by step
    and ends with its weights, bit for bit."""
    from gpuconv.amp import LossScaler
    update, scales = LossScaler.update, []

    def recording_update(self, found_inf):
        update(self, found_inf)
        scales[-1].append((bool(B.asnumpy(found_inf)), float(B.asnumpy(self.scale_))))
    monkeypatch.setattr(LossScaler, "update", recording_update)
    runs = []
    for graphed in (False, True):
        scales.append([])
        runs.append(_run(device, graphed, "fp16", loss_scaler=LossScaler(init_scale=2.0 ** 20, growth_interval=2)))
    (eager, e), (graphed, g) = runs
    assert scales[1] == scales[0] and len(scales[0]) == 16
    skipped = [i for i, (overflow, _) in enumerate(scales[0]) if overflow]
    assert skipped[0] == 0 and len(skipped) < 16  # overflowed steps, and clean ones
    assert any(b > a for (_, a), (_, b) in zip(scales[0], scales[0][1:]))  # grown as well as backed off
    for name in eager:
        np.testing.assert_array_equal(graphed[name], eager[name], err_msg=name)
    assert g.scaler.current_scale == e.scaler.current_scale


@pytest.mark.parametrize("device", DEVICES)
def test_unscaling_and_clipping_many_gradients_can_be_captured(device, monkeypatch):
    """LossScaler.unscale and clip_grad_norm_ over more gradients than CuPy joins without an upload:
    CuPy stacks or concatenates more than 8 arrays in one kernel whose table of their addresses it
    uploads from the host (cupy/_core/_routines_manipulation.pyx, _concatenate_single_kernel), and
    inside a CUDA graph's capture it refuses that upload ("the current stream is capturing, so H2D
    transfers are disallowed"): fp16 training under --cuda-graph of a network with more than 8
    gradients (airbench94's) failed at its capture. clip_grad_value_ follows them in the same step.
    On 'cuda' all run inside a capture, replayed;
    on 'sim' NumPy's joins stand for CuPy's, one of more than 8 arrays failing the test. Either
    way the gradients and the results are those computed here in NumPy."""
    from gpuconv.amp import LossScaler
    from gpuconv.layers import Parameter, clip_grad_norm_, clip_grad_value_
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 5)).astype(np.float32) for _ in range(12)]
    scale = 2.0 ** 4
    with gpuconv.default_device(device):
        params = [Parameter(gpuconv.to_device(np.zeros((3, 5), np.float32), device)) for _ in grads]
        for p, g in zip(params, grads):
            p.grad = gpuconv.to_device(g * scale, device)
        scaler = LossScaler(init_scale=scale)
        scaler.factor(params[0].grad)  # the scale on the device, before any capture

        def step():
            outputs = scaler.unscale(params), clip_grad_norm_(params, max_norm=1.0), clip_grad_norm_(
                params, max_norm=1.0, norm_type=np.inf)
            clip_grad_value_(params, 0.05)
            return outputs

        if device == "cuda":
            cp = B.cupy_module()
            stream = cp.cuda.Stream(non_blocking=True)
            with stream:
                stream.begin_capture()
                try:
                    outputs = step()
                finally:
                    graph = stream.end_capture()
                graph.launch(stream)
            stream.synchronize()
        else:
            for name in ("stack", "concatenate"):
                join = getattr(np, name)

                def counted(arrays, *args, join=join, name=name, **kwargs):
                    assert len(arrays) <= 8, f"np.{name} of {len(arrays)} arrays: CuPy would upload their addresses"
                    return join(arrays, *args, **kwargs)
                monkeypatch.setattr(np, name, counted)
            outputs = step()
        found, total2, total_inf = (float(B.asnumpy(v)) for v in outputs)
        clipped = [B.asnumpy(p.grad) for p in params]
    want2 = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    assert found == 0.0 and total2 == pytest.approx(want2, rel=1e-5)
    factor = min(1.0, 1.0 / (want2 + 1e-6))
    assert total_inf == pytest.approx(max(float(np.abs(g).max()) for g in grads) * factor, rel=1e-5)
    for got, g in zip(clipped, grads):
        np.testing.assert_allclose(got, np.clip(g * factor, -0.05, 0.05), rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_model_with_dropout_graphed_gives_the_eager_losses_and_parameters_bit_for_bit(device, precision):
    """Each dropout layer reads its mask key from the device while the graph holds it, written before
    every step from its own generator: the masks, hence the losses and the parameters, are the
    eager run's over two epochs, and the generator ends where the eager run's does (a replay that
    kept the capture's key would train on one mask)."""
    eager, eager_trainer = _run(device, False, precision, dropout=True)
    graphed, trainer = _run(device, True, precision, dropout=True)
    losses = [[(r["kind"], r["step"], r["train_loss"]) for r in t.history] for t in (eager_trainer, trainer)]
    assert losses[1] == losses[0] and len(losses[0]) == 2  # (each epoch's mean loss)
    assert eager.keys() == graphed.keys()
    for name in eager:
        np.testing.assert_array_equal(graphed[name], eager[name], err_msg=name)
    dropout = trainer.model[5]
    assert dropout._rng().bit_generator.state == eager_trainer.model[5]._rng().bit_generator.state
    assert trainer._graph._inputs is not None and not dropout._key_on_device  # released after the fit
    if device == "cuda":
        assert trainer._graph.captures == 2 and trainer._graph.replays == 2 * 7


def _dropout_setup(out_dir, cuda_graph, loader_cls=DeviceLoader, optimizer="sgd"):
    """A Trainer of the model with dropout over two epochs of 8 steps, and its loader (``optimizer``
    'adamw': an AdamW, else an SGD)."""
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (40, 3, 8, 8), dtype=np.uint8), rng.integers(0, 10, 40)
    model = _model(dropout=True)
    opt = AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.95)) if optimizer == "adamw" else \
        SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = OneCycleLR(opt, max_lr=0.05, total_steps=16)
    trainer = Trainer(model, opt, sched, out_dir=out_dir, log_every=4, progress=False, cuda_graph=cuda_graph)
    return trainer, loader_cls(imgs, labels, 5, seed=0, augment=True)


def test_a_graphed_fit_with_dropout_resumes_from_its_checkpoint_bit_for_bit(tmp_path):
    """Stopped in the middle of a graphed epoch (the step captured, each key written before its
    step), the checkpoint holds the dropout generator as the eager run's after as many steps; the
    graphed resume writes the following keys and ends where an eager fit without a stop does."""
    with gpuconv.default_device("sim"):
        full, loader = _dropout_setup(tmp_path / "full", False)
        full.fit(loader, 2)

        first, _ = _dropout_setup(tmp_path / "cut", True)
        killer = _dropout_setup(None, True, SigintAt)[1]
        killer.kill_at = (1, 4)  # Ctrl-C in the middle of epoch 2, after its capture
        with pytest.raises(TrainingInterrupted):
            first.fit(killer, 2)
        assert first.epoch == 1 and first.epoch_step == 5

        second, loader2 = _dropout_setup(tmp_path / "cut", True)
        second.fit(loader2, 2, resume=True)
    assert_same_state(full, second)
    assert second.model[5]._rng().bit_generator.state == full.model[5]._rng().bit_generator.state


def test_a_graphed_adamw_fit_resumes_from_its_checkpoint_bit_for_bit(tmp_path):
    """AdamW's step count lives on the device, incremented by every replay: the checkpoint of a
    graphed fit stopped mid-epoch holds it as an int, the count of the steps trained, and the
    graphed resume (its count made on the device from the loaded int) ends where a fit without a
    stop does, eager or graphed."""
    with gpuconv.default_device("sim"):
        full, loader = _dropout_setup(tmp_path / "full", False, optimizer="adamw")
        full.fit(loader, 2)
        graphed, loader = _dropout_setup(tmp_path / "graphed", True, optimizer="adamw")
        graphed.fit(loader, 2)

        first, _ = _dropout_setup(tmp_path / "cut", True, optimizer="adamw")
        killer = _dropout_setup(None, True, SigintAt, optimizer="adamw")[1]
        killer.kill_at = (1, 4)  # Ctrl-C in the middle of epoch 2, after its capture
        with pytest.raises(TrainingInterrupted):
            first.fit(killer, 2)
        assert first.epoch == 1 and first.epoch_step == 5
        saved = gpuconv.checkpoint.load_checkpoint(tmp_path / "cut" / "checkpoint.npz")
        counts = {k: v for k, v in saved.items() if k.endswith(".step") and "state." in k}
        assert counts and all(v.dtype.kind == "i" and int(v) == first.step == 13 for v in counts.values()), counts

        second, loader2 = _dropout_setup(tmp_path / "cut", True, optimizer="adamw")
        second.fit(loader2, 2, resume=True)
    assert_same_state(full, second)
    assert_same_state(graphed, second)
    assert all(isinstance(v, int) for k, v in second.optimizer.state_dict().items() if k.endswith(".step"))


def test_adams_hyperparameters_are_refused_a_change_while_a_graph_holds_it():
    """Adam's betas, eps and weight decay reach its update by value, as SGD's momentum does: while
    a graph holds it they are refused a change, as an attribute or through a parameter group
    (its lr and step count are read from the device); released, they change."""
    _, trainer = _run("sim", True, epochs=1, optimizer="adamw")
    opt = trainer.optimizer
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((5, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, 5)
    with gpuconv.default_device("sim"):
        trainer._graph(x, y)
    assert opt.lr_written_by_owner
    for name in ("beta1", "beta2", "eps", "weight_decay"):
        with pytest.raises(RuntimeError, match=f"AdamW: {name} cannot change while a captured training step"):
            setattr(opt, name, 0.5)
    with pytest.raises(RuntimeError, match="parameter group 1's betas cannot change while"):
        opt.param_groups[1]["betas"] = (0.5, 0.5)
    assert opt.betas == (0.8, 0.95) and opt.eps == 1e-8
    trainer._graph.release()
    opt.eps, opt.param_groups[1]["betas"] = 1e-6, (0.5, 0.5)
    assert opt.eps == 1e-6 and opt.param_groups[1]["betas"] == (0.5, 0.5)


def test_a_held_dropout_layer_in_eval_mode_is_the_identity_and_draws_nothing():
    """While a graph holds the model its dropout reads keys from the device in training alone: in
    eval mode (a validation between steps) it is the identity, draws no key and needs none written."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, 5)
    with gpuconv.default_device("sim"):
        model = _model(dropout=True)
        opt = SGD(model.parameters(), lr=0.05)
        graph = StepGraph.for_optimizer(lambda a, b: gpuconv.amp.training_step(model, opt, a, b), opt, model)
        graph(x, y)
        dropout = model[5]
        assert graph.holds and dropout._key_on_device
        state = dropout._rng().bit_generator.state
        model.eval()
        h = rng.standard_normal((5, 64)).astype(np.float32)
        assert dropout(h) is h and dropout(h) is h
        assert dropout._rng().bit_generator.state == state
        model.train()
        graph(x, y)  # the next step's key written before it, as ever
        assert dropout._rng().bit_generator.state != state
        graph.release()
        assert not dropout._key_on_device


@pytest.mark.parametrize("precision,optimizer,dropout", [("fp32", "sgd", False), ("bf16", "muon", False),
                                                         ("fp32", "sgd", True), ("fp16", "sgd", False),
                                                         ("tf32", "sgd", False),
                                                         ("fp32", "adam", False), ("bf16", "adamw", False),
                                                         ("fp16", "adam", False)])
def test_each_replay_launches_what_its_capture_launched(monkeypatch, precision, optimizer, dropout):
    """What a CUDA graph freezes, checked where the step runs itself at every call ('sim'): each
    step after a capture makes the capture's kernel launches with the same scalars (a per-step
    number passed by value would keep the capture's value at every replay: dropout's mask key is
    read from an array written before the step), and an array a
    captured launch took that was made before the capture (a parameter, a buffer, an optimizer
    slot) is the same array at every replay and stays alive (freed, the pool would give the
    memory the graph writes to other arrays). tracemalloc, traced over each step's own run,
    tells the arrays the step allocated from older ones (the graph's input buffers, the
    learning rates written before it). Adam's update is array operations rather than kernels:
    its parameters (and so its slots and every array computed from them) record the operations
    they take part in, as launches named by the operation (a per-step number taken by value, such
    as a bias correction computed on the host, would be frozen as a kernel's would)."""
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc is tracing already: this test restarts it at each step")
    steps = []
    launch, call = kernels.launch, StepGraph.__call__

    def arg(a):
        if not isinstance(a, np.ndarray):
            return "value", repr(a)
        while isinstance(a.base, np.ndarray):
            a = a.base
        return ("older" if tracemalloc.get_object_traceback(a) is None else "own"), weakref.ref(a)

    def recording_launch(op_file, kernel, dtype, target, grid, block, args, *more, **kw):
        if steps and steps[-1][1] is not None:
            steps[-1][1].append((kernel, tuple(grid), tuple(block), [arg(a) for a in args]))
        return launch(op_file, kernel, dtype, target, grid, block, args, *more, **kw)

    def recording_call(graph, x, y):
        phase = ("eager" if not graph._eager_done or graph._signature(x, y) != graph._key
                 else "capture" if graph._inputs is None else "replay")
        steps.append((phase, []))
        step = graph.fn

        def traced(*inputs):  # what a capture records: the step itself, after the input copies and lr writes
            tracemalloc.start()
            try:
                return step(*inputs)
            finally:
                tracemalloc.stop()
        graph.fn = traced
        try:
            return call(graph, x, y)
        finally:
            graph.fn = step
            steps.append(("between", None))

    class Recording(np.ndarray):
        """An array whose operations are recorded as launches of their operation."""
        def __array_ufunc__(self, ufunc, method, *inputs, out=(), **kw):
            if steps and steps[-1][1] is not None:
                steps[-1][1].append((f"{ufunc.__name__}.{method}", (), (), [arg(a) for a in inputs + tuple(out)]))
            plain = tuple(a.view(np.ndarray) if isinstance(a, Recording) else a for a in inputs)
            outs = tuple(a.view(np.ndarray) if isinstance(a, Recording) else a for a in out)
            result = getattr(ufunc, method)(*plain, **kw, **({"out": outs} if outs else {}))
            if outs:
                return out[0] if len(out) == 1 else out
            return result.view(Recording) if isinstance(result, np.ndarray) else result

    def recorded(model):
        for p in model.parameters():
            p.data = p.data.view(Recording)

    monkeypatch.setattr(kernels, "launch", recording_launch)
    monkeypatch.setattr(StepGraph, "__call__", recording_call)
    _, trainer = _run("sim", True, precision, epochs=1, optimizer=optimizer, dropout=dropout,
                      model_hook=recorded if optimizer.startswith("adam") else None)  # (kept: arrays alive)
    phases = [phase for phase, _ in steps if phase != "between"]
    assert phases == ["eager", "capture"] + ["replay"] * 6
    captured = next(launches for phase, launches in steps if phase == "capture")
    assert dropout == any(kernel == "dropout_forward" for kernel, *_ in captured)
    assert optimizer.startswith("adam") == any(kernel == "sqrt.__call__" for kernel, *_ in captured)
    # TF32: the tensor-core convolutions' operands rounded by their pass, captured with them
    assert (precision == "tf32") == any(kernel == "conv2d_tc_round_tf32" for kernel, *_ in captured)
    for phase, launches in steps:
        if phase != "replay":
            continue
        assert [c[:3] for c in launches] == [c[:3] for c in captured]
        for (kernel, _, _, at_capture), (_, _, _, at_replay) in zip(captured, launches):
            for i, ((kind, a), (kind_r, b)) in enumerate(zip(at_capture, at_replay)):
                where = f"{kernel} argument {i}"
                if kind == "value":
                    assert (kind_r, b) == (kind, a), f"{where}: {a} at the capture, {b} at a replay"
                elif kind == "older":
                    assert a() is not None, f"{where}: an array made before the capture was freed"
                    assert kind_r != "own" and b() is a(), f"{where}: another array at a replay"
                else:  # the graph's own at the capture: its own at a replay too (or the same array)
                    assert kind_r == "own" or b() is a(), f"{where}: an array made outside the step at a replay"


def test_the_optimizer_outlives_a_graphed_fit_as_it_was():
    """After a fit with cuda_graph=True the optimizer writes its own learning rates again (it kept
    the graph's owner mode: a later lr of 0 still moved the weights, a schedule was ignored), and
    a second fit takes it back."""
    _, trainer = _run("sim", True, epochs=1)
    opt, model = trainer.optimizer, trainer.model
    assert not opt.lr_written_by_owner
    opt.lr = 0.0
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((5, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, 5)
    with gpuconv.default_device("sim"):
        before = {n: B.asnumpy(p.data).copy() for n, p in model.named_parameters()}
        gpuconv.amp.training_step(model, opt, x, y)
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(B.asnumpy(p.data), before[n], err_msg=n)
    trainer._graph(x, y)
    assert opt.lr_written_by_owner


@pytest.mark.parametrize("optimizer", ["sgd", "muon", "adam", "adamw"])
def test_a_replay_reads_the_learning_rates_written_before_it(optimizer):
    """SGD, Muon, Adam and AdamW (its decoupled decay too) in owner mode read their groups' learning rates from the device: a step graph
    whose ``before`` stopped writing them keeps the first step's rate, and the schedule is lost
    (Muon's filter shows it, the SGD in its chain kept writing)."""
    def run(write_every_step):
        with gpuconv.default_device("sim"):
            model = _model()
            if optimizer == "muon":
                params = model.parameters()
                muon = Muon([params[0]], lr=0.1, momentum=0.6)
                opt = Chain(muon, SGD(params[1:], lr=0.05, momentum=0.9))
            elif optimizer in ("adam", "adamw"):
                opt = muon = (Adam if optimizer == "adam" else AdamW)(model.parameters(), lr=0.05, weight_decay=0.1)
            else:
                opt = muon = SGD(model.parameters(), lr=0.05, momentum=0.9)
            sched = OneCycleLR(opt, max_lr=0.05, total_steps=6)
            opt.lr_written_by_owner = True
            calls = []

            def before():
                if write_every_step or not calls:
                    opt.write_lrs()
                else:
                    [o.write_lrs() for o in getattr(opt, "optimizers", ()) if o is not muon]
                calls.append(1)

            step = StepGraph(lambda x, y: gpuconv.amp.training_step(model, opt, x, y), before=before)
            rng = np.random.default_rng(1)
            for _ in range(6):
                step(rng.standard_normal((5, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, 5))
                sched.step()
            return B.asnumpy(model[0].weight.data)

    np.testing.assert_array_equal(run(True), run(True))
    assert not np.array_equal(run(True), run(False))


def test_a_hyperparameter_changed_while_a_graph_replays_is_refused_and_free_between_epochs():
    """SGD's momentum (its weight decay, Nesterov; Muon's steps) reaches the update by value: a
    replay keeps the captured one, where the simulator's step reads the new one. Written as an
    attribute during a graphed epoch (a per-step schedule of one's own) it is refused, as a
    parameter group's write is; before the fit and in epoch_start (the epoch captures anew) both
    ways are free, and the run trains as the eager one."""
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8), rng.integers(0, 10, 20)

    class MomentumSchedule:  # the lr constant, the momentum falling at every step
        def __init__(self, opt):
            self.opt = opt

        def step(self):
            self.opt.momentum = self.opt.momentum - 0.01

    def run(cuda_graph, scheduled=False):
        with gpuconv.default_device("sim"):
            model = _model()
            opt = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

            def epoch_start(epoch):
                opt.momentum = 0.9 - 0.1 * epoch
                opt.param_groups[0]["weight_decay"] = 1e-3 * epoch

            trainer = Trainer(model, opt, MomentumSchedule(opt) if scheduled else None, progress=False,
                              log_every=4, epoch_start=None if scheduled else epoch_start, cuda_graph=cuda_graph)
            opt.momentum = 0.85  # before the fit: nothing is captured yet
            opt.param_groups[0]["nesterov"] = False
            trainer.fit(DeviceLoader(imgs, labels, 5, seed=0), 2)
            return {n: B.asnumpy(p.data).copy() for n, p in model.named_parameters()}

    eager, graphed = run(False), run(True)
    for name in eager:
        np.testing.assert_array_equal(graphed[name], eager[name], err_msg=name)
    with pytest.raises(RuntimeError, match="SGD: momentum cannot change while a captured training step"):
        run(True, scheduled=True)


def _run_changing(cuda_graph, change, scheduled=False):
    """Two epochs of 4 steps of a net whose layers take numbers by value (batch norm's momentum and
    eps, LPPool2d's norm_type, Scale's factor; the loss its label smoothing): ``change(model,
    trainer, epoch)`` before the fit (epoch None) and in epoch_start, or after every step
    (``scheduled``)."""
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8), rng.integers(0, 10, 20)
    with gpuconv.default_device("sim"):
        model = Sequential(Conv2d(3, 4, 3, padding=1, seed=0), BatchNorm2d(4), GELU(), LPPool2d(2, 2), Flatten(),
                           Linear(64, 10, seed=1), Scale(0.5))
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

        class EveryStep:
            def step(self):
                change(model, trainer, trainer.step)

        trainer = Trainer(model, opt, EveryStep() if scheduled else None, progress=False, log_every=4,
                          label_smoothing=0.1, epoch_start=None if scheduled else lambda e: change(model, trainer, e),
                          cuda_graph=cuda_graph)
        change(model, trainer, None)  # before the fit: nothing is captured yet
        trainer.fit(DeviceLoader(imgs, labels, 5, seed=0), 2)
        return {n: B.asnumpy(p.data).copy() for n, p in model.named_parameters()}, model, trainer


def _change_all(model, trainer, epoch):
    k = 0 if epoch is None else epoch + 1
    model[1].momentum, model[1].eps = 0.1 + 0.2 * k, 1e-5 * 10 ** k
    model[3].norm_type = 2 + 2 * k  # even: a window of negative GELU outputs has a p-norm
    model[6].factor = 0.5 / (1 + k)
    trainer.label_smoothing = 0.1 * k
    trainer.precision = ("fp32", "bf16")[k % 2]


@pytest.mark.parametrize("name", ["momentum", "eps", "norm_type", "factor", "label_smoothing", "precision"])
def test_a_number_a_kernel_takes_by_value_changed_while_a_graph_replays_is_refused(name):
    """Batch norm's momentum and eps, LPPool2d's norm_type, Scale's factor and the Trainer's label
    smoothing reach their kernels by value (its precision chooses the step's casts and kernels): a
    replay keeps the captured one, where the simulator's step reads the new one. Changed during a
    graphed epoch, each is refused."""
    owner = {"momentum": 1, "eps": 1, "norm_type": 3, "factor": 6}

    def change(model, trainer, step):
        if step is not None:
            target = trainer if name in ("label_smoothing", "precision") else model[owner[name]]
            value = getattr(target, name)
            setattr(target, name, value + 2 if name == "norm_type" else ("bf16" if value == "fp32" else "fp32")
                    if name == "precision" else value * 0.9)

    _run_changing(False, change, scheduled=True)  # an eager run takes every change
    with pytest.raises(RuntimeError, match=f": {name} cannot change while a captured training step"):
        _run_changing(True, change, scheduled=True)


def test_a_parameter_frozen_while_a_graph_replays_is_refused_and_free_between_epochs():
    """Which parameters a step updates is the captured graph's structure: a parameter frozen (or
    thawed) mid-epoch would go on being updated by every replay until the next capture. Refused
    during a graphed epoch; between epochs (epoch_start, where airbench freezes its whitening
    bias) the graphed run trains as the eager one."""
    def freeze_mid_epoch(model, trainer, step):
        if step == 2:
            model[0].bias.requires_grad = False

    _run_changing(False, freeze_mid_epoch, scheduled=True)
    with pytest.raises(RuntimeError, match="Parameter .*requires_grad cannot change while a captured training step"):
        _run_changing(True, freeze_mid_epoch, scheduled=True)

    def freeze_between(model, trainer, epoch):
        model[0].bias.requires_grad = epoch is None or epoch < 1

    (eager, _, _), (graphed, model, _) = _run_changing(False, freeze_between), _run_changing(True, freeze_between)
    for name in eager:
        np.testing.assert_array_equal(graphed[name], eager[name], err_msg=name)
    model[0].bias.requires_grad = True  # after the fit: free again
    assert model[0].bias.requires_grad


def _held_net():
    """A small net on 'sim' and the StepGraph that holds it after one step (call under the device)."""
    net = Sequential(Conv2d(3, 2, 1, seed=0), BatchNorm2d(2), Flatten(), Linear(8, 3, seed=1))
    opt = SGD(net.parameters(), lr=0.1)
    step = StepGraph.for_optimizer(lambda x, y: gpuconv.amp.training_step(net, opt, x, y), opt, net)
    step(np.ones((2, 3, 2, 2), np.float32), np.array([0, 1]))
    return net, step


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_of_a_held_model_is_held_by_no_graph(how):
    """A model copied during a graphed epoch (a snapshot of the best weights, an EMA's start) is held
    by no graph: the copy's parameters and layers take changes a replay would freeze, while the live
    model still refuses them."""
    copier = copy.deepcopy if how == "deepcopy" else (lambda m: pickle.loads(pickle.dumps(m)))
    with gpuconv.default_device("sim"):
        net, step = _held_net()
        twin = copier(net)
    twin[3].bias.requires_grad = False
    twin[1].momentum = 0.5
    assert not twin[3].bias.requires_grad and twin[1].momentum == 0.5
    np.testing.assert_array_equal(B.asnumpy(twin[3].weight.data), B.asnumpy(net[3].weight.data))
    with pytest.raises(RuntimeError, match="requires_grad cannot change while"):
        net[3].bias.requires_grad = False
    with pytest.raises(RuntimeError, match="momentum cannot change while"):
        net[1].momentum = 0.5


def test_a_graph_of_ones_own_is_released_not_reset_before_a_parameter_is_frozen():
    """Outside the Trainer, a StepGraph.for_optimizer holding a model refuses a parameter frozen after
    reset() (which the module's docstring named for that); release() frees it, the next call
    captures anew, and the refusal says so."""
    with gpuconv.default_device("sim"):
        net = Sequential(Flatten(), Linear(12, 3, seed=0))
        opt = SGD(net.parameters(), lr=0.1)
        step = StepGraph.for_optimizer(lambda x, y: gpuconv.amp.training_step(net, opt, x, y), opt, net)
        x, y = np.ones((2, 3, 2, 2), np.float32), np.array([0, 1])
        step(x, y), step(x, y)
        step.reset()
        with pytest.raises(RuntimeError, match=r"requires_grad cannot change while .*StepGraph of one's own: "
                                                r"release\(\) it first"):
            net[1].bias.requires_grad = False
        step.release()
        net[1].bias.requires_grad = False
        step(x, y)
        assert step.holds and step._eager_done and step._inputs is None  # ran eagerly: the next call captures anew
        assert "release" in gpuconv.graphs.__doc__.split("Memory:")[0].split("reset")[1]


def test_state_loaded_while_a_graph_replays_is_refused_whole_and_free_between_epochs(tmp_path):
    """A captured step computes with the arrays of its capture (parameters, buffers, optimizer slots)
    and takes the hyperparameters by value: a load_state_dict during a graphed epoch replaced the
    arrays (on a GPU every replay went on with the old ones) or, with another hyperparameter, was
    refused halfway (the lr and a group's weight decay loaded). Refused whole, the model's, the
    optimizer's and the Trainer's checkpoint alike; in epoch_start the graphed run loads and trains
    as the eager one."""
    refused = []

    def load_mid_epoch(model, trainer, step):
        if step != 2:
            return
        opt = trainer.optimizer
        state = opt.state_dict()
        other = dict(state, momentum=0.5, lr=0.3, **{"group.0.weight_decay": 0.5})
        kept = [opt.lr, opt.param_groups[0]["weight_decay"], trainer.epoch_step]
        arrays = [opt.state[0]["momentum_buffer"], model[0].weight.data, model[1].running_mean]
        for load in (lambda: opt.load_state_dict(other), lambda: opt.load_state_dict(state),
                     lambda: model.load_state_dict(model.state_dict()),
                     lambda: trainer.load_checkpoint(tmp_path / "none.npz")):  # refused before it is read
            with pytest.raises(RuntimeError, match=r"\.load_\w+: the (training )?state cannot be replaced while a "
                                                   r"captured training step"):
                load()
        assert [opt.lr, opt.param_groups[0]["weight_decay"], trainer.epoch_step] == kept
        assert all(a is b for a, b in zip([opt.state[0]["momentum_buffer"], model[0].weight.data,
                                           model[1].running_mean], arrays))
        refused.append(step)

    _run_changing(True, load_mid_epoch, scheduled=True)
    assert refused == [2]
    saved = {}

    def load_between(model, trainer, epoch):
        if epoch is None:
            return
        if epoch == 0:
            saved.update(model=model.state_dict(), optim=trainer.optimizer.state_dict())
        else:
            model.load_state_dict(saved["model"])
            trainer.optimizer.load_state_dict(saved["optim"])

    (eager, _, _), (graphed, _, _) = _run_changing(False, load_between), _run_changing(True, load_between)
    for name in eager:
        np.testing.assert_array_equal(graphed[name], eager[name], err_msg=name)


def test_a_held_model_is_not_moved_or_cast_and_free_once_released():
    """A captured step trains the arrays of its capture: a model cast (astype) or moved (cpu() then
    cuda() around a save, a PyTorch habit) while a graph holds it got new arrays, which on a GPU no
    replay trained. Refused, untouched; a move to where it is changes nothing and is free; released,
    the model converts."""
    with gpuconv.default_device("sim"):
        net, step = _held_net()
        arrays = [net[3].weight.data, net[1].running_mean]
        with pytest.raises(RuntimeError, match="Sequential: its arrays cannot be moved or cast while a captured"):
            net.astype(np.float32)
        assert all(a is b for a, b in zip([net[3].weight.data, net[1].running_mean], arrays))
        net.to("sim")  # where it is: the same arrays
        assert net[3].weight.data is arrays[0]
        step.release()
        net.astype(np.float64)
        assert net[3].weight.dtype == np.float64


def test_numbers_a_kernel_takes_by_value_are_free_before_the_fit_and_between_epochs():
    """Set before the fit and in epoch_start (the epoch captures anew), the graphed run trains as the
    eager one, and after the fit the layers and the trainer take changes again."""
    (eager, _, _), (graphed, model, trainer) = _run_changing(False, _change_all), _run_changing(True, _change_all)
    for name in eager:
        np.testing.assert_array_equal(graphed[name], eager[name], err_msg=name)
    model[1].momentum, model[6].factor, trainer.label_smoothing, trainer.precision = 0.5, 0.25, 0.0, "fp32"
    assert (model[1].momentum, model[6].factor, trainer.label_smoothing, trainer.precision) == (0.5, 0.25, 0.0, "fp32")


@pytest.mark.parametrize("order", ["C", "F"])
def test_sgd_reads_the_device_lr_for_a_parameter_the_fused_kernel_does_not_take(order):
    """In owner mode a replay runs with the learning rate last written to the device, for every
    parameter: one the fused kernel does not take (not C-contiguous: a weight set through
    ``.data`` from a transposed array) runs the array form, which read the host's lr, a number a
    CUDA graph keeps at its capture's value."""
    with gpuconv.default_device("sim"):
        w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
        fc = Linear(4, 3)
        fc.weight.data, fc.bias.data = np.array(w, order=order), np.zeros(3, np.float32)
        assert fc.weight.data.flags.c_contiguous == (order == "C")
        opt = SGD(fc.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        opt.lr_written_by_owner = True
        opt.write_lrs()  # the device holds 0.1, what a replay would read
        opt.lr = 0.5     # the schedule's next value, not yet written
        fc.weight.grad, fc.bias.grad = np.ones((3, 4), np.float32), np.ones(3, np.float32)
        opt.step()
        expected = w - np.float32(0.1) * (np.float32(1) + np.float32(5e-4) * w)
        np.testing.assert_array_equal(B.asnumpy(fc.weight.data), expected)


def test_cuda_graph_refuses_what_a_replay_would_freeze():
    model = _model()
    params = model.parameters()

    class HostLR(SGD):  # a subclass may read per-step host values: it says device_lrs itself, or is refused
        pass

    class HostAdam(Adam):
        pass
    with pytest.raises(ValueError, match="cuda_graph=True: the optimizer is HostLR"):
        Trainer(model, HostLR(params, lr=0.1), progress=False, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph=True: the optimizer is Chain; a replayed step reads only SGD's, "
                                         "Muon's, Adam's and AdamW's learning rates"):
        Trainer(model, Chain(Muon(params[:1]), HostAdam(params[1:])), progress=False, cuda_graph=True)
    # Adam's and AdamW's learning rates and step counts live on the device
    for opt in (Adam(params), AdamW(params), Chain(Muon(params[:1]), Adam(params[1:]))):
        assert Trainer(model, opt, progress=False, cuda_graph=True)._graph is not None
    # fp16's loss scale and overflow skips live on the device, the scaler's arrays updated in place
    assert Trainer(model, SGD(model.parameters(), lr=0.1), progress=False, precision="fp16",
                   cuda_graph=True)._graph is not None
    dropped = Sequential(Flatten(), Dropout(0.5), Linear(192, 10))  # its mask keys are written before each step
    assert Trainer(dropped, SGD(dropped.parameters(), lr=0.1), progress=False, cuda_graph=True)._graph is not None
    assert Trainer(model, SGD(model.parameters(), lr=0.1), progress=False)._graph is None


def _rate_run(when, cuda_graph):
    """Two epochs of a net whose dropout is given a rate of 0.5 ``when``: before the fit (after the
    Trainer is built), in epoch_start (from epoch 1), or mid-epoch by a per-step schedule."""
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (10, 3, 2, 2), dtype=np.uint8), rng.integers(0, 10, 10)
    with gpuconv.default_device("sim"):
        net = Sequential(Flatten(), Dropout(0.0, seed=3), Linear(12, 10, seed=0))

        def give_rate(epoch=None):
            if epoch != 0:
                net[1].p = 0.5

        class MidEpoch:
            def step(self):
                if trainer.step == 2:
                    give_rate()

        trainer = Trainer(net, SGD(net.parameters(), lr=0.1), MidEpoch() if when == "mid-epoch" else None,
                          progress=False, log_every=4, cuda_graph=cuda_graph,
                          epoch_start=give_rate if when == "epoch_start" else None)
        if when == "before the fit":
            give_rate()
        trainer.fit(DeviceLoader(imgs, labels, 2, seed=0), 2)
    return net


@pytest.mark.parametrize("when", ["before the fit", "epoch_start"])
def test_dropout_given_a_rate_after_the_trainer_is_built_trains_as_the_eager_run(when):
    """A rate given after the graphed Trainer is built (before the fit, in epoch_start: the graph
    holds nothing then) has its mask keys written before each step from then on, as the eager run
    draws them."""
    eager, graphed = _rate_run(when, False), _rate_run(when, True)
    assert graphed[1].p == 0.5
    np.testing.assert_array_equal(graphed[2].weight.data, eager[2].weight.data)
    assert graphed[1]._rng().bit_generator.state == eager[1]._rng().bit_generator.state
    assert graphed[1]._rng().bit_generator.state != Dropout(seed=3)._rng().bit_generator.state  # keys were drawn


def test_dropout_given_a_rate_mid_epoch_is_refused():
    """A rate is taken by value by the kernel: a change while the graph holds the layer (a per-step
    schedule) is refused, and free again once the fit has released it."""
    with pytest.raises(RuntimeError, match="Dropout: p cannot change while a captured training step"):
        _rate_run("mid-epoch", True)
    net = _rate_run("mid-epoch", False)
    net[1].p = 0.25


def _fake_cupy(monkeypatch):
    """CuPy faked for a StepGraph (arrays 'on a GPU' a NumPy subclass): what the graph did, in order,
    goes to ``seen``; ``on[id(array)]`` says which GPU an array is on; ``current[0]`` is CuPy's
    current device; ``cuda.allocator[0]`` the allocator of a capture, whose cudaMalloc fails while
    ``cuda.gpu.full``."""
    from conftest import fake_cupy_second_gpu
    fake, current = fake_cupy_second_gpu(monkeypatch)
    FakeArray, seen = fake.ndarray, []

    class Stream:
        def __init__(self, non_blocking=False):
            self.device = current[0]

        def record(self):
            return None

        def wait_event(self, event):
            pass

        def begin_capture(self):
            seen.append(("capture", self.device, current[0]))

        def end_capture(self):
            return types.SimpleNamespace(launch=lambda stream: seen.append(("launch", stream.device, current[0])))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def empty_like(a):
        seen.append(("buffer", current[0]))
        return np.empty_like(a).view(FakeArray)

    class CUDARuntimeError(RuntimeError):
        def __init__(self, status):
            super().__init__(f"CUDA error {status}")
            self.status = status

    class OutOfMemoryError(MemoryError):
        def __init__(self, size, total):
            super().__init__(f"Out of memory allocating {size:,} bytes")

    gpu = types.SimpleNamespace(full=False)  # cudaMalloc fails while the GPU is full

    def malloc_memory(size):
        if gpu.full:
            raise CUDARuntimeError(2)  # cudaErrorMemoryAllocation
        return types.SimpleNamespace(size=size)

    class MemoryPool:  # a graph's own, as CuPy's: its blocks go back to the current GPU alone
        def __init__(self, allocator=None):
            self.allocator = allocator or (lambda size: (malloc_memory(size), 0))

        def malloc(self, size):  # CuPy's pool at a failed cudaMalloc: its cached blocks freed, then once more
            try:
                return self.allocator(size)
            except CUDARuntimeError as exc:
                if exc.status != 2:
                    raise
                self.free_all_blocks()
                return self.allocator(size)

        def free_all_blocks(self):
            seen.append(("free graph's", current[0]))

    allocator = [None]  # what using_allocator set: the capture's pool's malloc

    @contextlib.contextmanager
    def using_allocator(malloc):
        allocator[0], before = malloc, allocator[0]
        try:
            yield
        finally:
            allocator[0] = before

    pool = types.SimpleNamespace(free_all_blocks=lambda: seen.append(("free", current[0])))
    vars(fake.cuda).update(Stream=Stream, MemoryPool=MemoryPool, using_allocator=using_allocator, allocator=allocator,
                           get_current_stream=Stream, gpu=gpu, Memory=malloc_memory,
                           MemoryPointer=lambda memory, offset: (memory, offset),
                           runtime=types.SimpleNamespace(CUDARuntimeError=CUDARuntimeError),
                           memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError))
    vars(fake).update(empty_like=empty_like, copyto=np.copyto, get_default_memory_pool=lambda: pool)
    on = {}
    monkeypatch.setattr(B, "device_id", lambda a: on[id(a.base if a.base is not None else a)])
    return seen, current, on, FakeArray


def test_a_graph_is_captured_and_replayed_on_the_batchs_gpu(monkeypatch):
    """CuPy makes arrays, streams and captures on its current device: a step on cuda:1 while cuda:0
    is current (a fit outside default_device('cuda:1')) made its input buffers, its stream and its
    graph on GPU 0. CuPy is faked (the arrays 'on cuda:1' a NumPy subclass); a batch on another GPU
    captures anew."""
    seen, current, on, FakeArray = _fake_cupy(monkeypatch)

    def step(x, y):
        seen.append(("step", current[0]))
        return (x,)

    graph = StepGraph(step)
    for gpu in (1, 1, 1, 2, 2):
        x, y = np.zeros((2, 3, 4, 4), np.float32), np.zeros(2, np.int64)
        on[id(x)] = on[id(y)] = gpu
        graph(x.view(FakeArray), y.view(FakeArray))
    assert current == [0]
    # before each capture the default pool's cached blocks go back to the batch's GPU: the capture's
    # own pool would otherwise add a step's memory to the peak of the eager step
    # (and the graph's own pool gives back, on GPU 1, what the capture there left: at the reset the
    # batch's move makes, and again at the next capture)
    assert seen == [("step", 1), ("buffer", 1), ("buffer", 1), ("free", 1), ("capture", 1, 1), ("step", 1),
                    ("launch", 1, 1), ("launch", 1, 1), ("free graph's", 1), ("step", 2), ("buffer", 2),
                    ("buffer", 2), ("free", 2), ("free graph's", 1), ("capture", 2, 2), ("step", 2),
                    ("launch", 2, 2)]


def test_a_graphs_memory_goes_back_at_each_reset_and_when_the_graph_goes(monkeypatch):
    """A captured step allocates from the graph's own CuPy memory pool. Since CuPy 14.1 the blocks a
    pool caches for no array and their arena hold one another (cupy/cuda/memory.pyx: an arena
    lives as long as its chunks), out of the garbage collector's sight, and no pool frees them
    when it goes: a pool merely dropped, as each reset dropped the graph's (every graphed epoch's
    start), kept a whole step's memory allocated for the rest of the process, one more step's at
    every epoch. The graph hands them back at each reset and when it goes, on the GPU it captured
    on, whichever is current then. CuPy is faked."""
    seen, current, on, FakeArray = _fake_cupy(monkeypatch)
    graph = StepGraph(lambda x, y: (x,))

    def call():
        x, y = np.zeros((2, 3, 4, 4), np.float32), np.zeros(2, np.int64)
        on[id(x)] = on[id(y)] = 1
        graph(x.view(FakeArray), y.view(FakeArray))

    call(), call(), call()  # eager, captured, replayed
    seen.clear()
    graph.reset()  # (the trainer's, at an epoch's start)
    assert seen == [("free graph's", 1)]
    call(), call()
    assert graph.captures == 2 and ("free graph's", 1) in seen  # the first capture's arrays freed since
    seen.clear()
    del graph
    gc.collect()
    assert seen == [("free graph's", 1)]


def test_a_dropout_key_array_is_made_on_the_batchs_gpu(monkeypatch):
    """write_key fills its key array on the current GPU (the batch's, in a graph's step): kept while
    the GPU stays, made anew on another (a model moved between graphed fits), where the kernel
    would otherwise read a key from the other GPU."""
    _, current, on, FakeArray = _fake_cupy(monkeypatch)
    fake = B.cupy_module()

    def zeros(shape, dtype):
        a = np.zeros(shape, dtype).view(FakeArray)
        on[id(a.base)] = current[0]
        return a
    monkeypatch.setattr(fake, "zeros", zeros, raising=False)
    monkeypatch.setattr(gpuconv.layers.dropout, "device_id", B.device_id)  # (the fake's, as Dropout imported it)
    layer, twin = Dropout(0.5, seed=4), Dropout(0.5, seed=4)
    layer.write_key(fake)
    first = layer._key_at
    layer.write_key(fake)
    assert layer._key_at is first
    current[0] = 1
    layer.write_key(fake)
    assert layer._key_at is not first and B.device_id(layer._key_at) == 1
    keys = [int(twin._rng().integers(0, 2**64, dtype=np.uint64)) for _ in range(3)]
    assert int(layer._key_at[0]) == keys[-1]


def test_a_graph_that_goes_during_another_graphs_capture_frees_its_memory_after_it(monkeypatch):
    """A graph's end frees its pool's cached blocks (cudaFree). The garbage collector may end a
    graph (a Trainer and its graph refer to one another) at any allocation, inside another graph's
    capture, where a cudaFree may invalidate the capture or synchronize: its blocks go back once
    the capture has ended. CuPy is faked."""
    seen, current, on, FakeArray = _fake_cupy(monkeypatch)
    old = StepGraph(lambda x, y: (x,))
    holder = {"old": old}

    def step(x, y):
        if B.cupy_module().cuda.allocator[0] is not None and "old" in holder:  # in the new graph's capture
            del holder["old"]
            gc.collect()
            seen.append(("collected", current[0]))
        return (x,)

    new = StepGraph(step)

    def call(graph):
        x, y = np.zeros((2, 3, 4, 4), np.float32), np.zeros(2, np.int64)
        on[id(x)] = on[id(y)] = 1
        graph(x.view(FakeArray), y.view(FakeArray))

    call(old), call(old)  # old has captured: its pool exists, its end frees it
    del old
    seen.clear()
    call(new), call(new)
    assert seen[seen.index(("capture", 1, 1)):] == [("capture", 1, 1), ("collected", 1), ("free graph's", 1),
                                                    ("launch", 1, 1)], seen


def test_a_capture_out_of_gpu_memory_frees_none_of_the_graphs_blocks(monkeypatch):
    """CuPy's pool answers a failed cudaMalloc by freeing the blocks it caches and trying again
    (cupy/cuda/memory.pyx, SingleDeviceMemoryPool._try_malloc). Inside a capture, the graph's
    pool caches blocks that kernels captured earlier write into: a cudaFree there invalidated the
    capture (a CUDA error in place of the out-of-memory) or gave them to the GPU, where arrays
    outside the graph would get them and every replay overwrite them. A capture out of memory
    raises CuPy's OutOfMemoryError (which the trainer explains) and frees none of the graph's
    blocks. CuPy is faked, its pool's retry as CuPy's."""
    seen, current, on, FakeArray = _fake_cupy(monkeypatch)
    cuda = B.cupy_module().cuda

    def step(x, y):
        if cuda.allocator[0] is not None:  # in the capture: two arrays, the GPU full at the second
            cuda.allocator[0](512)
            cuda.gpu.full = True
            cuda.allocator[0](1 << 20)
        return (x,)

    graph = StepGraph(step)
    x, y = np.zeros((2, 3, 4, 4), np.float32), np.zeros(2, np.int64)
    on[id(x)] = on[id(y)] = 0
    graph(x.view(FakeArray), y.view(FakeArray))
    with pytest.raises(MemoryError, match="Out of memory allocating 1,048,576 bytes"):
        graph(x.view(FakeArray), y.view(FakeArray))
    assert ("free graph's", 0) not in seen[seen.index(("capture", 0, 0)):]


@pytest.mark.parametrize("change", ["set_variant", "use_variant", "autotuning", "table loaded", "table cleared",
                                    "precision mode"])
def test_another_choice_of_kernels_captures_anew(monkeypatch, change):
    """A replay runs the kernels its capture launched: a variant chosen (set_variant, use_variant),
    autotuning turned on, a table of tuned variants loaded or cleared, or TF32 turned on after a
    capture made no difference to the replays on a GPU, while the simulator's step, which runs every
    time, took it. The graph runs eagerly and captures anew instead, and again when the choice is
    undone. CuPy is faked."""
    seen, current, on, FakeArray = _fake_cupy(monkeypatch)

    def step(x, y):
        seen.append(("step", kernels.variant("conv2d_forward", np.float32), gpuconv.get_precision()))
        return (x,)

    def call(graph):
        x, y = np.zeros((2, 3, 4, 4), np.float32), np.zeros(2, np.int64)
        on[id(x)] = on[id(y)] = 0
        graph(x.view(FakeArray), y.view(FakeArray))

    def phases():
        kinds = [e[0] for e in seen if e[0] in ("step", "capture", "launch")]
        seen.clear()
        return kinds

    def changed():
        if change == "set_variant":
            kernels.set_variant("conv2d_forward", "v1")
            return contextlib.nullcontext()
        return {"use_variant": lambda: kernels.use_variant(conv2d_forward="v1"),
                "autotuning": kernels.autotuning,
                "table loaded": lambda: contextlib.nullcontext(kernels.load_tuned_variants({})),
                "table cleared": lambda: contextlib.nullcontext(kernels.clear_tuned()),
                "precision mode": lambda: gpuconv.precision_mode("tf32")}[change]()

    def run():
        graph = StepGraph(step)
        call(graph), call(graph), call(graph)
        assert phases() == ["step", "capture", "step", "launch", "launch"]
        with changed():
            call(graph), call(graph), call(graph)
            assert phases() == ["step", "capture", "step", "launch", "launch"], f"{change}: not captured anew"
        if change == "set_variant":
            kernels.set_variant("conv2d_forward", None)
        call(graph), call(graph)
        again = phases()
        if change in ("table loaded", "table cleared"):  # (a change to the table is not undone)
            assert again == ["launch", "launch"]
        else:
            assert again == ["step", "capture", "step", "launch"], f"{change} undone: not captured anew"

    tuned = kernels.tuned_variants()
    try:
        contextvars.copy_context().run(run)  # (set_variant's choice stays in that context)
    finally:
        kernels.load_tuned_variants(tuned, replace=True)

"""Frozen parameters, per-group hyperparameters (PyTorch's param groups), their state dicts, and
the weight lookahead (EMA)."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import backend as B
from gpuconv import nn
from gpuconv.layers import Parameter
from gpuconv.lookahead import Lookahead, airbench_decay
from gpuconv.optim import SGD, Adam, AdamW, Chain, Muon, StepLR, TriangularLR
from test_optim import KERNEL_DEVICES


def _p(backend, values, name="p"):
    return Parameter(backend.asarray(np.array(values, np.float64)), name)


def test_frozen_parameter_keeps_no_grad_and_is_not_updated(backend):
    p, q = _p(backend, [1.0, 2.0]), _p(backend, [3.0])
    q.requires_grad = False
    q.accumulate(backend.asarray(np.array([5.0])))
    assert q.grad is None  # no gradient kept
    q.grad = backend.asarray(np.array([5.0]))  # even one set by hand is ignored
    p.accumulate(backend.asarray(np.array([1.0, 1.0])))
    opt = SGD([p, q], lr=0.5, momentum=0.9, weight_decay=0.1)
    opt.step()
    np.testing.assert_array_equal(backend.asnumpy(q.data), [3.0])
    assert "momentum_buffer" not in opt.state[1]
    np.testing.assert_allclose(backend.asnumpy(p.data), [1 - 0.5 * 1.1, 2 - 0.5 * 1.2])
    q.requires_grad = True  # unfrozen again: trained from the next step
    q.grad = backend.asarray(np.array([2.0]))
    p.grad = None
    opt.step()
    assert backend.asnumpy(q.data)[0] == pytest.approx(3.0 - 0.5 * (2.0 + 0.3))


def test_frozen_layer_weight_gets_no_gradient(backend):
    conv = nn.Conv2d(2, 3, 3, padding=1)
    conv.weight.requires_grad = False
    x = backend.asarray(np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32))
    y = conv(x)
    conv.backward(backend.asarray(np.ones(y.shape, np.float32)))
    assert conv.weight.grad is None and conv.bias.grad is not None
    assert conv.num_parameters() == 3 and conv.num_parameters(trainable_only=False) == 3 * 2 * 9 + 3
    assert "requires_grad=False" in repr(conv.weight)


def test_groups_override_lr_and_weight_decay_and_follow_the_schedule(backend):
    a, b = _p(backend, [1.0]), _p(backend, [1.0])
    opt = SGD([{"params": [a], "lr": 1.0, "weight_decay": 0.0}, {"params": [b]}], lr=0.1, weight_decay=0.5)
    a.grad, b.grad = backend.asarray(np.array([1.0])), backend.asarray(np.array([1.0]))
    opt.step()
    assert backend.asnumpy(a.data)[0] == pytest.approx(0.0)           # 1 - 1.0 * 1
    assert backend.asnumpy(b.data)[0] == pytest.approx(1 - 0.1 * 1.5)  # 1 - 0.1 * (1 + 0.5 * 1)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    sched.step()  # optimizer lr 0.05: the group's lr halves with it
    assert opt.hyper(0)["lr"] == pytest.approx(0.5) and opt.hyper(1)["lr"] == pytest.approx(0.05)


def test_group_state_dict_round_trip(backend):
    def build():
        a, b = _p(backend, [1.0, 2.0]), _p(backend, [3.0])
        return a, b, SGD([{"params": [a], "lr": 0.2, "momentum": 0.5}, {"params": [b], "nesterov": True}],
                         lr=0.1, momentum=0.9)
    a, b, opt = build()
    for _ in range(3):
        a.grad, b.grad = a.data.copy(), b.data.copy()
        opt.step()
    opt.lr = 0.05
    saved = opt.state_dict()
    a2, b2, opt2 = build()
    a2.data[...] = a.data
    b2.data[...] = b.data
    opt2.load_state_dict(saved)
    assert opt2.hyper(0) == opt.hyper(0) and opt2.hyper(1) == opt.hyper(1)
    for _ in range(2):
        for x in (a, b, a2, b2):
            x.grad = x.data.copy()
        opt.step()
        opt2.step()
    np.testing.assert_array_equal(backend.asnumpy(a.data), backend.asnumpy(a2.data))
    np.testing.assert_array_equal(backend.asnumpy(b.data), backend.asnumpy(b2.data))
    other = SGD([{"params": [a2, b2]}], lr=0.1)
    with pytest.raises(ValueError, match=r"parameter groups hold \[1, 1\] parameters, this optimizer's \[2\]"):
        other.load_state_dict(saved)


def test_a_loaded_state_dict_brings_the_saved_groups_values_whole(backend):
    """As PyTorch's load_state_dict replaces its param_groups' values: a group value the loading
    optimizer set that the saved group did not (which followed its optimizer's) goes (it was kept:
    a group trained with the weight decay and lr of neither run); a load that fails changes no group."""
    a, b = _p(backend, [1.0, 2.0]), _p(backend, [3.0])
    saved = SGD([{"params": [a]}, {"params": [b], "momentum": 0.5}], lr=0.1, momentum=0.9,
                weight_decay=0.01).state_dict()
    opt = SGD([{"params": [a], "lr": 0.5, "weight_decay": 0.0}, {"params": [b]}], lr=0.1, momentum=0.9,
              weight_decay=0.01)
    bad = dict(saved, **{"state.0.unknown": np.zeros(2)})
    with pytest.raises(ValueError, match="unknown state entry 'state.0.unknown'"):
        opt.load_state_dict(bad)
    assert (opt.hyper(0)["lr"], opt.hyper(0)["weight_decay"], opt.hyper(1)["momentum"]) == (0.5, 0.0, 0.9)
    opt.load_state_dict(saved)
    assert opt.hyper(0) == {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.01}
    assert opt.hyper(1) == {"lr": 0.1, "momentum": 0.5, "nesterov": False, "weight_decay": 0.01}


def test_group_errors(backend):
    a, b = _p(backend, [1.0]), _p(backend, [1.0])
    with pytest.raises(ValueError, match=r"group 0 sets 'betas'; a group may set lr, momentum, nesterov, weight_decay"):
        SGD([{"params": [a], "betas": (0.9, 0.9)}], lr=0.1)
    with pytest.raises(ValueError, match=r"SGD\(dampening=0.1\) is not supported"):
        SGD([a], lr=0.1, dampening=0.1)
    with pytest.raises(ValueError, match=r"AdamW\(amsgrad=True\) is not supported"):
        AdamW([a], amsgrad=True)
    with pytest.raises(ValueError, match="group 0 has nesterov=True and momentum 0"):
        SGD([a], lr=0.1, nesterov=True)
    # the optimizer's momentum 0 is fine where every Nesterov group has its own
    assert SGD([{"params": [a], "momentum": 0.9}], lr=0.1, nesterov=True).hyper(0)["momentum"] == 0.9
    with pytest.raises(ValueError, match=r"group 1 has no 'params' key"):
        SGD([{"params": [a]}, {"lr": 0.1}], lr=0.1)
    with pytest.raises(TypeError, match=r"mixes group dicts and Parameters"):
        SGD([{"params": [a]}, b], lr=0.1)
    with pytest.raises(ValueError, match=r"a parameter appears twice"):
        SGD([{"params": [a]}, {"params": [a]}], lr=0.1)
    with pytest.raises(ValueError, match=r"group 0 sets lr while the optimizer's lr is 0"):
        SGD([{"params": [a], "lr": 0.1}], lr=0.0)
    with pytest.raises(ValueError, match=r"parameter group 0's weight_decay must be a finite number >= 0"):
        Adam([{"params": [a], "weight_decay": -1}])


def test_params_that_are_not_an_iterable_of_parameters_are_named(backend):
    """A single Parameter, or a model, given for ``params`` is refused by name with the fix (it
    failed inside ``list()`` with "'Parameter' object is not iterable"); a group's ``'params'``
    may be one Parameter, as PyTorch takes a single tensor there."""
    from gpuconv.layers import Linear
    a, b = _p(backend, [1.0]), _p(backend, [2.0])
    with pytest.raises(TypeError, match=r"SGD: params must be an iterable .* got a Parameter; pass "
                                        r"model.parameters\(\) \(or \[p\] for a single parameter\)"):
        SGD(a, lr=0.1)
    with pytest.raises(TypeError, match=r"Adam: params must be an iterable .* got a Linear; pass model.parameters"):
        Adam(Linear(2, 2))
    opt = SGD([{"params": a, "lr": 0.5}, {"params": [b]}], lr=0.1)
    assert [g["params"] for g in opt.param_groups] == [[a], [b]]
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]


def test_param_groups_read_and_write_as_in_pytorch(backend):
    """``param_groups`` shows 'params' and every value in effect; ``g['lr'] *= 0.1`` decays a
    group's step (the fused update on 'sim' reads it), and a schedule scales it from there."""
    a, b = _p(backend, [1.0]), _p(backend, [1.0])
    opt = SGD([{"params": [a], "lr": 1.0}, {"params": [b], "weight_decay": 0.0}], lr=0.1, momentum=0.0,
              weight_decay=0.5)
    groups = opt.param_groups
    assert [g["params"] for g in groups] == [[a], [b]] and sorted(groups[0]) == sorted(
        ["params", "lr", "momentum", "nesterov", "weight_decay"])
    assert [g["lr"] for g in groups] == [1.0, 0.1] and [g["weight_decay"] for g in groups] == [0.5, 0.0]
    for g in opt.param_groups:
        g["lr"] *= 0.1
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.1), pytest.approx(0.01)]
    a.grad, b.grad = backend.asarray(np.array([1.0])), backend.asarray(np.array([1.0]))
    opt.step()
    assert backend.asnumpy(a.data)[0] == pytest.approx(1 - 0.1 * 1.5)
    assert backend.asnumpy(b.data)[0] == pytest.approx(1 - 0.01)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.05), pytest.approx(0.005)]
    opt.param_groups[1]["momentum"] = 0.9  # another hyperparameter, for that group only
    assert opt.hyper(1)["momentum"] == 0.9 and opt.hyper(0)["momentum"] == 0.0
    saved = opt.state_dict()  # written values are state: a rebuilt optimizer loads them
    fresh = SGD([{"params": [a], "lr": 1.0}, {"params": [b], "weight_decay": 0.0}], lr=0.1, momentum=0.0,
                weight_decay=0.5)
    fresh.load_state_dict(saved)
    assert [fresh.hyper(i) for i in (0, 1)] == [opt.hyper(i) for i in (0, 1)]
    assert "'params': <1 parameters>" in repr(opt.param_groups[0])


def test_param_group_writes_are_checked(backend):
    a, b = _p(backend, [1.0]), _p(backend, [1.0])
    opt = SGD([a], lr=0.1, momentum=0.9, nesterov=True)
    group = opt.param_groups[0]
    with pytest.raises(ValueError, match="nesterov=True and momentum 0"):
        group["momentum"] = 0
    assert group["momentum"] == 0.9  # a refused write changes nothing
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        group["lr"] = -1
    with pytest.raises(KeyError, match="has params, lr, momentum, nesterov, weight_decay; not 'betas'"):
        group["betas"] = (0.9, 0.99)
    with pytest.raises(TypeError, match="fixed when the optimizer is built"):
        group["params"] = [b]
    with pytest.raises(TypeError, match="always has 'lr'"):
        del group["lr"]
    adam = Adam([{"params": [a], "betas": (0.8, 0.9)}, {"params": [b]}])  # PyTorch's spelling of the pair
    assert adam.hyper(0)["beta1"] == 0.8 and adam.param_groups[1]["betas"] == (0.9, 0.999)
    adam.param_groups[1]["betas"] = (0.5, 0.6)
    assert (adam.hyper(1)["beta1"], adam.hyper(1)["beta2"]) == (0.5, 0.6)
    with pytest.raises(ValueError, match="beta2 must be in \\[0, 1\\)"):
        adam.param_groups[1]["betas"] = (0.5, 1.0)
    assert adam.param_groups[1]["betas"] == (0.5, 0.6)
    with pytest.raises(ValueError, match="beta1 must be in \\[0, 1\\)"):
        Adam([{"params": [a], "beta1": 1.5}])
    muon = Muon([_p(backend, [[1.0, 0.0], [0.0, 1.0]])])
    muon.param_groups[0]["steps"] = 5
    assert muon.hyper(0)["steps"] == 5
    with pytest.raises(ValueError, match="steps must be a whole number"):
        muon.param_groups[0]["steps"] = 2.5
    chain = Chain(muon, SGD([a], lr=0.1))
    assert [len(g["params"]) for g in chain.param_groups] == [1, 1]
    chain.param_groups[1]["lr"] = 0.02
    assert chain.optimizers[1].hyper(0)["lr"] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="nesterov=True and momentum 0"):
        Muon([{"params": [_p(backend, [[1.0]])], "momentum": 0}])
    with pytest.raises(ValueError, match="steps must be"):
        muon.param_groups[0]["steps"] = 0


def test_a_groups_params_cannot_be_changed_in_place(backend):
    """``opt.param_groups[0]['params'].append(p)`` (a PyTorch script's way to add a parameter) changed a
    fresh list and nothing else: ``p`` was never trained, without a word. The list reads as one and
    refuses a change by name; its copies are plain lists."""
    import copy
    a, b = _p(backend, [1.0]), _p(backend, [2.0])
    params = SGD([a], lr=0.1).param_groups[0]["params"]
    assert params == [a] and params[0] is a and len(params) == 1
    for change in (lambda: params.append(b), lambda: params.extend([b]), lambda: params.__iadd__([b]),
                   lambda: params.__setitem__(0, b), lambda: params.pop()):
        with pytest.raises(TypeError, match="a parameter group's 'params' are fixed when the optimizer is built"):
            change()
    assert params == [a]
    mine = copy.deepcopy(params)
    mine.append(b)
    assert type(mine) is list and len(mine) == 2


def test_hyperparameter_attribute_writes_are_checked_as_the_constructor_checks_them(backend):
    """``opt.momentum = ...`` and the like were taken as given: a string broke the second step deep in
    the update, a negative weight decay trained silently, Adam's beta1 = 1 divided by zero at the
    step, nesterov=True with momentum 0 passed; each is now refused by name, the value kept."""
    a = _p(backend, [[1.0, 2.0], [3.0, 4.0]])
    sgd = SGD([a], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"momentum must be a finite number >= 0, got '0.9'"):
        sgd.momentum = "0.9"
    with pytest.raises(ValueError, match=r"weight_decay must be a finite number >= 0, got -5"):
        sgd.weight_decay = -5
    assert (sgd.momentum, sgd.weight_decay) == (0.9, 0.0)
    sgd.momentum = 0  # then nesterov=True: refused, and the momentum kept
    with pytest.raises(ValueError, match="group 0 has nesterov=True and momentum 0"):
        sgd.nesterov = True
    assert sgd.nesterov is False
    adam = Adam([a])
    with pytest.raises(ValueError, match=r"group 0's beta1 must be in \[0, 1\), got 1.0"):
        adam.beta1 = 1.0
    assert adam.beta1 == 0.9
    muon = Muon([a])
    with pytest.raises(ValueError, match="steps must be a whole number, got 2.5"):
        muon.steps = 2.5
    muon.steps = 5.0
    assert muon.steps == 5 and type(muon.steps) is int and muon.param_groups[0]["steps"] == 5


def test_param_group_lr_writes_that_no_schedule_could_keep_are_refused(backend):
    """Where the optimizer's lr is 0 (a warm-up's start, a decay's end) a group's lr, which follows
    it in proportion, cannot be given another value; a group on a schedule of its own has its lr
    set by that schedule; a step captured as a CUDA graph keeps the other values it was captured
    with. Each is refused with the way out, and changes nothing."""
    a, b = _p(backend, [1.0]), _p(backend, [1.0])
    opt = SGD([{"params": [a]}, {"params": [b]}], lr=0.1, momentum=0.9)
    opt.lr = 0.0
    with pytest.raises(ValueError, match="the optimizer's lr is 0 now"):
        opt.param_groups[0]["lr"] = 0.05
    opt.lr = 0.1
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]
    sched = TriangularLR(opt, total_steps=10)
    sched.own_schedule([b], lambda step: 1.0 - step / 10)
    with pytest.raises(ValueError, match="follows a schedule of its own"):
        opt.param_groups[1]["lr"] = 0.5
    opt.lr_written_by_owner = True  # what a captured step (gpuconv.graphs.StepGraph) sets
    with pytest.raises(RuntimeError, match="captured training step"):
        opt.param_groups[0]["momentum"] = 0.5
    assert opt.hyper(0)["momentum"] == 0.9
    opt.param_groups[0]["lr"] = 0.01  # the lr lives on the device: the graph reads it at each replay


def test_a_group_on_a_schedule_of_its_own(backend):
    """LRSchedule.own_schedule: one group steps at factor(step) times its initial lr while the
    rest follow the schedule (the fused update on 'sim' reads it too), in a Chain's member as
    well; a schedule rebuilt and loaded continues it from the saved step."""
    a, b, c = _p(backend, [1.0]), _p(backend, [1.0]), _p(backend, [1.0])

    def build():
        sgd = SGD([{"params": [a], "lr": 0.4}, {"params": [b]}], lr=0.1)
        opt = Chain(sgd, SGD([c], lr=0.2))
        sched = TriangularLR(opt, total_steps=10, warmup_fraction=0.0, peak=1.0, end=0.0)
        sched.own_schedule([a], lambda step: max(0.0, 1.0 - step / 4))
        return sgd, opt, sched

    sgd, opt, sched = build()
    for step in range(6):
        own, common = 0.4 * max(0.0, 1 - step / 4), 1 - step / 10
        assert sgd.hyper(0)["lr"] == pytest.approx(own) and sgd.hyper(1)["lr"] == pytest.approx(0.1 * common)
        before = [float(backend.asnumpy(p.data)[0]) for p in (a, b, c)]
        for p in (a, b, c):
            p.grad = backend.asarray(np.array([1.0]))
        opt.step()
        after = [float(backend.asnumpy(p.data)[0]) for p in (a, b, c)]
        np.testing.assert_allclose(np.subtract(before, after), [own, 0.1 * common, 0.2 * common], rtol=1e-12, atol=1e-15)
        sched.step()
    saved = sched.state_dict()
    sgd2, _, sched2 = build()
    assert sgd2.hyper(0)["lr"] == pytest.approx(0.4)
    sched2.load_state_dict(saved)
    assert sgd2.hyper(0)["lr"] == 0.0 and sgd2.hyper(1)["lr"] == pytest.approx(0.1 * 0.4)
    with pytest.raises(ValueError, match=r"no parameter group holds exactly those 2 parameters \(its groups hold "
                                         r"\[1, 1\]\); give them a group of their own"):
        sgd.find_group([a, b])
    with pytest.raises(ValueError, match=r"Chain: none of its optimizers has a parameter group of exactly those 2"):
        sched.own_schedule([a, c], lambda step: 1.0)
    with pytest.raises(ValueError, match=r"SGD: parameter group 2 does not exist \(it has 2\)"):
        sgd.set_group_lr(2, 0.1)


def test_muon_on_parameters_moved_off_the_device_follows_its_schedule():
    """Muon reads its lr from the device on 'sim'; moved to the CPU, it follows hyper() again
    rather than the last value written there."""
    from gpuconv.optim import Muon
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((4, 2, 3, 3))
    w = Parameter(w0.copy(), "w")  # NumPy arrays: 'sim' inside its default_device block, the CPU outside
    opt = Muon([w], lr=0.1, momentum=0.6)
    w.grad = w.data.copy()
    with gpuconv.default_device("sim"):
        opt.step()
    opt.lr = 0.0
    before = w.data.copy()
    w.grad = np.ones_like(w.data)
    opt.step()
    # lr 0: only the renormalization to ||w|| = 2 moves the weights
    np.testing.assert_allclose(w.data, before * (2.0 / np.linalg.norm(before)), rtol=1e-12)


def test_adam_groups(backend):
    a, b = _p(backend, [1.0]), _p(backend, [1.0])
    opt = Adam([{"params": [a], "lr": 0.01}, {"params": [b]}], lr=0.001)
    a.grad, b.grad = backend.asarray(np.array([2.0])), backend.asarray(np.array([2.0]))
    opt.step()  # Adam's first step moves by lr (sign of the gradient)
    assert backend.asnumpy(a.data)[0] == pytest.approx(1 - 0.01, rel=1e-6)
    assert backend.asnumpy(b.data)[0] == pytest.approx(1 - 0.001, rel=1e-6)


# ----------------------------------------------------------------------------- lookahead
def test_lookahead_pulls_weights_and_buffers_to_the_average(backend):
    bn = nn.BatchNorm2d(2)
    look = Lookahead(bn)
    w0 = backend.asnumpy(bn.bias.data).copy()
    bn.bias.data += 1.0
    bn.running_mean[...] = 4.0
    look.update(decay=0.75)  # ema = 0.75 ema + 0.25 w; w = ema
    np.testing.assert_allclose(backend.asnumpy(bn.bias.data), w0 + 0.25)
    np.testing.assert_allclose(backend.asnumpy(bn.running_mean), [1.0, 1.0])
    bn.bias.data += 10.0
    look.update(decay=1.0)  # back onto the average
    np.testing.assert_allclose(backend.asnumpy(bn.bias.data), w0 + 0.25)
    saved = look.state_dict()
    look2 = Lookahead(bn)
    look2.load_state_dict(saved)
    bn.bias.data += 3.0
    look2.update(decay=0.0)  # the average jumps to the model
    np.testing.assert_allclose(backend.asnumpy(bn.bias.data), w0 + 3.25)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
        look.update(1.5)
    with pytest.raises(ValueError, match=r"'ema.weight' is missing"):
        look.load_state_dict({})


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Adam(ps, lr=0.1),
                                  lambda ps: AdamW(ps, lr=0.1)])
def test_optimizers_take_parameters_as_pytorch_scripts_pass_them(make):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, seed=0), nn.Flatten(), nn.Linear(4, 2, seed=1))
    every = list(net.parameters())
    assert make(net.parameters()).params == every
    assert make(p for p in net.parameters() if p.requires_grad).params == every  # a generator, read once
    assert make(filter(lambda p: p.requires_grad, net.parameters())).params == every
    it = net.parameters()
    next(it)
    assert make(it).params == every[1:]  # what is left of it, as of PyTorch's generator
    opt = make([{"params": (p for p in net[0].parameters()), "lr": 0.2}, {"params": iter(net[2].parameters())}])
    assert opt.params == every and [len(g["params"]) for g in opt.param_groups] == [2, 2]
    assert opt.param_groups[0]["lr"] == 0.2
    opt = make(net[0].parameters())
    opt.add_param_group({"params": (p for p in net[2].parameters()), "lr": 0.05})
    assert opt.params == every and opt.param_groups[1]["lr"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"the parameter list is empty; pass model.parameters\(\)"):
        make(p for p in net.parameters() if p.data.ndim == 0)


def test_lookahead_of_a_parameter_list_says_it_takes_the_model():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match=r"must be a gpuconv Layer .* got list: pass the model itself, Lookahead\(net\)"):
        Lookahead(net.parameters())


class _Arrays:
    """A stand-in model for Lookahead: named float parameters and buffers of many sizes."""

    def __init__(self, arrays):
        self.params = {f"p{i}": Parameter(a) for i, a in enumerate(arrays)}

    def named_parameters(self):
        return list(self.params.items())

    def named_buffers(self):
        return []


@pytest.mark.parametrize("target", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lookahead_kernel_gives_the_array_forms_bits(dtype, target):
    """On a kernel target (the simulator, a GPU) the update is lookahead_update, LOOKAHEAD_TENSORS
    arrays a launch, with the array form's bits (the NumPy path on 'cpu'), decay 1 (the pull back,
    the average untouched, infinities included), 0 and in between."""
    from gpuconv import kernels
    from gpuconv.lookahead import LOOKAHEAD_TENSORS
    rng = np.random.default_rng(4)
    sizes = [1, 7, 300, 5, 1000, 64, 3, 2, 9, 17, 256]  # 11 arrays: two launches
    start = [rng.standard_normal(n).astype(dtype) for n in sizes]
    steps = [[rng.standard_normal(n).astype(dtype) * 3 for n in sizes] for _ in range(3)]
    steps[2][4][5] = np.inf
    results = {}
    for where in ("cpu", target):
        with gpuconv.default_device(where):
            model = _Arrays([B.to_device(a.copy(), where) for a in start])
            look = Lookahead(model)
            with kernels.launch_log() as log:
                for moves, decay in zip(steps, (0.3, 0.0, 1.0)):
                    for p, d in zip(model.params.values(), moves):
                        p.data += B.to_device(d, where)
                    look.update(decay)
            results[where] = ([B.asnumpy(p.data).copy() for p in model.params.values()],
                              [B.asnumpy(look.ema[k]).copy() for k in look.ema])
            if where == target:
                assert log.names == ["lookahead_update"] * 2 * 3 and LOOKAHEAD_TENSORS == 8
            else:
                assert log.names == []
    for a, b in zip(results["cpu"][0] + results["cpu"][1], results[target][0] + results[target][1]):
        assert a.tobytes() == b.tobytes()


def test_lookahead_takes_the_array_form_where_the_kernel_does_not_apply():
    """A strided buffer, a float16 array: the array form, beside the kernel's launch for the rest."""
    from gpuconv import kernels
    strided = np.arange(20, dtype=np.float32)[::2]
    with gpuconv.default_device("sim"):
        model = _Arrays([np.ones(4, np.float32), np.ones(3, np.float16)])
        model.params["p2"] = Parameter(np.ones(10, np.float32))
        model.params["p2"].data = strided
        look = Lookahead(model)
        strided += 2
        with kernels.launch_log() as log:
            look.update(0.5)
    assert log.names == ["lookahead_update"]
    np.testing.assert_array_equal(strided, np.arange(20, dtype=np.float32)[::2] + 1)


def test_airbench_decay_schedule():
    assert airbench_decay(0, 100) == 0.0
    assert airbench_decay(100, 100) == pytest.approx(0.95 ** 5)
    assert airbench_decay(50, 100) == pytest.approx(0.95 ** 5 / 8)
    with pytest.raises(ValueError, match=r"step must be in \[0, total_steps=10\]"):
        airbench_decay(11, 10)


# ----------------------------------------------------------------------------- Muon
def test_newton_schulz_orthogonalizes():
    from gpuconv.optim import newton_schulz
    rng = np.random.default_rng(0)
    for shape in ((8, 20), (20, 8)):
        g = rng.standard_normal(shape) @ np.diag(np.logspace(-1, 1, shape[1]))  # condition number 100
        x = newton_schulz(g.astype(np.float32), steps=5)
        assert x.shape == shape and x.dtype == np.float32
        sv = np.linalg.svd(x.astype(np.float64), compute_uv=False)
        assert sv.min() > 0.3 and sv.max() < 1.3, sv  # near 1 in every direction, whatever g's spread
        u, _, vt = np.linalg.svd(g, full_matrices=False)
        # the same singular directions as g: x = U S' V^T with S' near the identity
        assert np.abs(u.T @ x @ vt.T - np.diag(np.diag(u.T @ x @ vt.T))).max() < 1e-3


def test_muon_step_and_state(backend):
    rng = np.random.default_rng(1)
    w = Parameter(backend.asarray(rng.standard_normal((4, 2, 3, 3))), "w")
    g = rng.standard_normal((4, 2, 3, 3))
    from gpuconv.optim import Muon, newton_schulz
    opt = Muon([w], lr=0.1, momentum=0.6, nesterov=True)
    w0 = backend.asnumpy(w.data).copy()
    w.grad = backend.asarray(g)
    opt.step()
    # b = g; nesterov: g + 0.6 b = 1.6 g; the weight renormalized to ||w|| = sqrt(4) first
    want = w0 * (2.0 / np.linalg.norm(w0)) - 0.1 * newton_schulz(1.6 * g.reshape(4, -1)).reshape(g.shape)
    np.testing.assert_allclose(backend.asnumpy(w.data), want, rtol=1e-10, atol=1e-12)
    saved = opt.state_dict()
    opt2 = Muon([Parameter(backend.asarray(backend.asnumpy(w.data).copy()), "w")], lr=0.1, momentum=0.6)
    opt2.load_state_dict(saved)
    np.testing.assert_array_equal(backend.asnumpy(opt2.state[0]["momentum_buffer"]), g)
    # a weight of zeros has no norm to rescale: it takes the update alone (0/0 made it NaN)
    z = Parameter(backend.asarray(np.zeros((4, 2, 3, 3))), "z")
    z.grad = backend.asarray(g)
    Muon([z], lr=0.1, momentum=0.6).step()
    np.testing.assert_allclose(backend.asnumpy(z.data), -0.1 * newton_schulz(1.6 * g.reshape(4, -1)).reshape(g.shape),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"Muon: params\[0\] \('b'\) has shape \(4,\).*give 1-D parameters to SGD"):
        Muon([Parameter(backend.asarray(np.zeros(4)), "b")])


def test_a_group_lr_written_mid_schedule_is_the_lr_its_next_step_takes(backend):
    """``g['lr'] = x`` while a schedule has the optimizer's lr away from its initial value: the
    group steps with x now, and the schedule scales x from there on."""
    a = _p(backend, [1.0])
    opt = SGD([{"params": [a], "lr": 1.0}], lr=0.1)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    sched.step()  # the schedule's factor is 0.5 now
    opt.param_groups[0]["lr"] = 0.2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    a.grad = backend.asarray(np.array([1.0]))
    opt.step()
    assert backend.asnumpy(a.data)[0] == pytest.approx(1 - 0.2)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_a_loaded_state_dict_brings_the_initial_lr_the_group_lrs_follow(backend):
    """Group lrs scale by ``lr / initial_lr``; the state dict carries both, so an optimizer built
    with another lr continues with the saved one's group lrs."""
    def build(lr):
        return SGD([{"params": [_p(backend, [1.0])], "lr": 1.0}, {"params": [_p(backend, [1.0])]}], lr=lr)
    opt = build(0.1)
    opt.lr = 0.05  # as a schedule sets it
    fresh = build(0.2)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.initial_lr == 0.1
    assert [g["lr"] for g in fresh.param_groups] == [pytest.approx(0.5), pytest.approx(0.05)]


def test_chain_state_dict_restores_its_lr():
    """A Chain's lr (the schedule's handle) comes back with its state dict, as its members' do."""
    def build():
        return Chain(Muon([Parameter(np.ones((2, 2)), "w")], lr=0.2),
                     SGD([Parameter(np.ones(2), "b")], lr=0.1))
    chain = build()
    chain.lr = 0.5
    loaded = build()
    loaded.load_state_dict(chain.state_dict())
    assert loaded.lr == 0.5
    assert [o.lr for o in loaded.optimizers] == [pytest.approx(0.1), pytest.approx(0.05)]


def test_a_chain_load_refused_by_a_member_changes_no_member():
    """A Chain's state dict whose second member's part is refused left the first member loaded (half a
    run's state, half another's); the load is now all or nothing, as a single optimizer's is."""
    w, b = Parameter(np.ones((2, 2)), "w"), Parameter(np.ones(2), "b")
    chain = Chain(Muon([w], lr=0.2), SGD([b], lr=0.1, momentum=0.9))
    w.grad, b.grad = np.ones((2, 2)), np.ones(2)
    chain.step()
    saved = chain.state_dict()
    w.grad, b.grad = np.full((2, 2), 3.0), np.full(2, 3.0)
    chain.step()
    chain.lr = 0.5
    buffers = [st["momentum_buffer"].copy() for st in chain.state]
    bad = dict(saved, **{"1.state.0.unknown": np.zeros(2)})
    with pytest.raises(ValueError, match="unknown state entry 'state.0.unknown'"):
        chain.load_state_dict(bad)
    for st, before in zip(chain.state, buffers):
        np.testing.assert_array_equal(st["momentum_buffer"], before)
    assert [o.lr for o in chain.optimizers] == [pytest.approx(0.1), pytest.approx(0.05)]


def test_muon_momentum_decays_the_buffer_between_steps(backend):
    """Two steps: ``b = momentum * b + g`` keeps the first gradient at weight ``momentum`` in the
    second step's update (Nesterov: ``g2 + momentum * b``)."""
    from gpuconv.optim import newton_schulz
    rng = np.random.default_rng(3)
    w0, g1, g2 = (rng.standard_normal((3, 4)) for _ in range(3))
    w = Parameter(backend.asarray(w0.copy()), "w")
    opt = Muon([w], lr=0.1, momentum=0.6, nesterov=True, normalize=False)
    for g in (g1, g2):
        w.grad = backend.asarray(g)
        opt.step()
    b1 = g1
    b2 = 0.6 * b1 + g2
    want = w0 - 0.1 * newton_schulz(1.6 * g1) - 0.1 * newton_schulz(g2 + 0.6 * b2)
    np.testing.assert_allclose(backend.asnumpy(opt.state[0]["momentum_buffer"]), b2, rtol=1e-12)
    np.testing.assert_allclose(backend.asnumpy(w.data), want, rtol=1e-10, atol=1e-12)


def test_add_param_group_as_in_pytorch(backend):
    """``opt.add_param_group({...})`` (a layer thawed for fine-tuning) was missing. The new group's lr
    is the lr its next step takes, as ``param_groups[-1]['lr']`` reads it; from there the schedule
    drives it in proportion, as it drives the others; a key it leaves out takes the optimizer's
    value. On 'sim' the device learning rates gain the group (the fused SGD kernel reads them)."""
    a, b, c = _p(backend, [1.0], "a"), _p(backend, [2.0], "b"), _p(backend, [3.0], "c")
    opt = SGD([a], lr=0.1, momentum=0.9)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    a.grad = backend.asarray(np.array([1.0]))
    opt.step()
    sched.step()  # the optimizer's lr 0.05 now
    opt.add_param_group({"params": [b], "lr": 0.4, "weight_decay": 0.5})
    opt.add_param_group({"params": c})  # (one Parameter, as PyTorch takes it): the optimizer's lr and values
    assert len(opt.param_groups) == 3 and opt.param_groups[1]["params"][0] is b
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.05), pytest.approx(0.4), pytest.approx(0.05)]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.5, 0.0]
    assert opt.param_groups[2]["momentum"] == 0.9 and sched.get_last_lr()[1] == pytest.approx(0.4)
    for p in (a, b, c):
        p.grad = backend.asarray(np.array([1.0]))
    opt.step()
    assert backend.asnumpy(b.data)[0] == pytest.approx(2.0 - 0.4 * (1 + 0.5 * 2.0))  # a first step: buffer = g
    assert backend.asnumpy(c.data)[0] == pytest.approx(3.0 - 0.05)
    np.testing.assert_allclose(backend.asnumpy(opt.state[b]["momentum_buffer"]), [2.0])
    sched.step()  # every group halves with the schedule
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.025), pytest.approx(0.2), pytest.approx(0.025)]
    opt.step()
    assert backend.asnumpy(c.data)[0] == pytest.approx(3.0 - 0.05 - 0.025 * (1 + 0.9))


def test_add_param_group_refuses_what_pytorch_refuses(backend):
    a, b = _p(backend, [1.0], "a"), _p(backend, [1.0], "b")
    opt = SGD([{"params": [a]}], lr=0.1)
    with pytest.raises(ValueError, match=r"add_param_group: parameter 'a' is already in parameter group 0"):
        opt.add_param_group({"params": [b, a]})
    with pytest.raises(ValueError, match=r"parameter 'b' appears twice in the group"):
        opt.add_param_group({"params": [b, b]})
    with pytest.raises(TypeError, match=r"'params' is a set, whose order differs between runs"):
        opt.add_param_group({"params": {b}})
    with pytest.raises(TypeError, match=r"params\[0\] is a ndarray, not a gpuconv Parameter"):
        opt.add_param_group({"params": [b.data]})
    with pytest.raises(ValueError, match=r"the group has no 'params' key"):
        opt.add_param_group({"lr": 0.1})
    with pytest.raises(ValueError, match=r"the group's 'params' is empty"):
        opt.add_param_group({"params": []})
    with pytest.raises(ValueError, match=r"the group sets 'betas'; a group may set lr, momentum, nesterov"):
        opt.add_param_group({"params": [b], "betas": (0.9, 0.9)})
    with pytest.raises(ValueError, match=r"parameter group 1's weight_decay must be a finite number >= 0"):
        opt.add_param_group({"params": [b], "weight_decay": -1})
    with pytest.raises(ValueError, match=r"group 1 has nesterov=True and momentum 0"):
        opt.add_param_group({"params": [b], "nesterov": True})
    with pytest.raises(TypeError, match=r"param_group must be a dict"):
        opt.add_param_group([b])
    opt.lr = 0.0
    with pytest.raises(ValueError, match=r"the optimizer's lr is 0 now"):
        opt.add_param_group({"params": [b], "lr": 0.1})
    assert len(opt.param_groups) == 1 and opt.params == [a] and len(opt.state) == 1  # nothing refused was added
    with pytest.raises(ValueError, match=r"Muon orthogonalizes matrices"):
        Muon([_p(backend, [[1.0, 2.0]])], lr=0.1).add_param_group({"params": [b]})
    adam = Adam([a], lr=0.01)
    adam.add_param_group({"params": [b], "betas": (0.5, 0.6)})
    assert adam.param_groups[1]["betas"] == (0.5, 0.6) and adam.param_groups[1]["eps"] == adam.eps


def test_a_chain_sees_the_group_a_member_adds():
    """In a Chain, a group goes to one member (each has its own update), a parameter another
    member holds is refused by name, and the chain's parameters, states, groups and state dict
    take the new one; a copy of the chain keeps its members linked."""
    import copy
    w, v = Parameter(np.ones((2, 2)), "w"), Parameter(np.ones((2, 3)), "v")
    b, c = Parameter(np.ones(2), "b"), Parameter(np.ones(2), "c")
    chain = Chain(Muon([w], lr=0.1), SGD([b], lr=0.1, momentum=0.9))
    sched = StepLR(chain, step_size=1, gamma=0.5)
    with pytest.raises(TypeError, match=r"add the group to one of them, e.g. chain.optimizers\[-1\].add_param_group"):
        chain.add_param_group({"params": [c]})
    with pytest.raises(ValueError, match=r"parameter 'w' is already in parameter group 0 of the chain's Muon"):
        chain.optimizers[1].add_param_group({"params": [w]})
    chain.optimizers[1].add_param_group({"params": [c], "lr": 0.3})
    chain.optimizers[0].add_param_group({"params": [v]})
    assert [id(p) for p in chain.params] == [id(w), id(v), id(b), id(c)] and len(chain.state) == 4
    assert [g["lr"] for g in chain.param_groups] == [pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.1),
                                                     pytest.approx(0.3)]
    for p in chain.params:
        p.grad = np.ones_like(p.data)
    chain.step()
    sched.step()
    assert sched.get_last_lr()[3] == pytest.approx(0.15) and chain.state[c]["momentum_buffer"] is not None
    saved = chain.state_dict()
    twin = copy.deepcopy(chain)
    with pytest.raises(ValueError, match=r"parameter 'w' is already in parameter group 0 of the chain's Muon"):
        twin.optimizers[1].add_param_group({"params": [twin.optimizers[0].params[0]]})
    fresh = Chain(Muon([Parameter(np.ones((2, 2)))], lr=0.1), SGD([Parameter(np.ones(2))], lr=0.1, momentum=0.9))
    with pytest.raises(ValueError, match=r"holds 2 parameters, this optimizer 1: .*add_param_group the groups"):
        fresh.load_state_dict(saved)
    fresh.optimizers[0].add_param_group({"params": [Parameter(np.ones((2, 3)))]})
    fresh.optimizers[1].add_param_group({"params": [Parameter(np.ones(2))], "lr": 0.3})
    fresh.load_state_dict(saved)
    assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in chain.param_groups]


def test_add_param_group_state_dict_round_trip(backend):
    """A state dict saved after add_param_group loads into an optimizer given the same groups and
    continues bit for bit (Adam's step counts and moments of the new group too)."""
    def build(with_group, lr=0.01):
        a, b = _p(backend, [1.0, 2.0]), _p(backend, [3.0])
        opt = Adam([a], lr=lr, weight_decay=0.1)
        sched = StepLR(opt, step_size=2, gamma=0.5)
        if with_group:
            opt.add_param_group({"params": [b], "lr": 0.05, "betas": (0.8, 0.9)})
        return a, b, opt, sched

    a, b, opt, sched = build(False)
    for step in range(5):
        if step == 2:
            opt.add_param_group({"params": [b], "lr": 0.05, "betas": (0.8, 0.9)})
        a.grad, b.grad = a.data * 0.5, b.data * 0.5
        opt.step()
        sched.step()
    a2, b2, opt2, sched2 = build(True, lr=0.7)
    a2.data[...], b2.data[...] = a.data, b.data
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[1]["lr"] == opt.param_groups[1]["lr"] and opt2.lr == opt.lr
    for _ in range(3):
        for x in (a, b, a2, b2):
            x.grad = x.data * 0.5
        opt.step(), opt2.step(), sched.step(), sched2.step()
    np.testing.assert_array_equal(backend.asnumpy(a.data), backend.asnumpy(a2.data))
    np.testing.assert_array_equal(backend.asnumpy(b.data), backend.asnumpy(b2.data))
    assert int(opt2.state[1]["step"]) == 6


def test_a_group_added_while_a_graph_holds_the_optimizer_is_refused_and_free_between_epochs():
    """A captured step updates the parameters of its capture: a group added mid-epoch would go
    untrained by every replay. Refused while a graph holds the optimizer; in epoch_start (the graph
    released, a new capture follows) the graphed run trains the new group as the eager one does."""
    from gpuconv.data import DeviceLoader
    from gpuconv.graphs import StepGraph
    from gpuconv.trainer import Trainer
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (12, 3, 4, 4), dtype=np.uint8), rng.integers(0, 10, 12)

    def run(cuda_graph):
        model = nn.Sequential(nn.Conv2d(3, 2, 1, seed=0), nn.Flatten(), nn.Linear(32, 10, seed=1))
        opt = SGD(model[0].parameters(), lr=0.05, momentum=0.9)
        head = model[2].parameters()
        before = [p.data.copy() for p in head]

        def thaw(epoch):
            if epoch == 1:
                opt.add_param_group({"params": head, "lr": 0.1})

        Trainer(model, opt, log_every=3, progress=False, epoch_start=thaw, cuda_graph=cuda_graph).fit(
            DeviceLoader(imgs, labels, 4, seed=0), 2)
        assert not all(np.array_equal(p.data, q) for p, q in zip(head, before))  # the head trained
        return [p.data for p in model.parameters()]

    for eager, graphed in zip(run(False), run(True)):
        np.testing.assert_array_equal(graphed, eager)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3, seed=1))
    opt = SGD(net[1].parameters()[:1], lr=0.1)
    step = StepGraph.for_optimizer(lambda x, y: gpuconv.amp.training_step(net, opt, x, y), opt, net)
    step(np.ones((2, 3, 2, 2), np.float32), np.array([0, 1]))
    with pytest.raises(RuntimeError, match=r"SGD.add_param_group: a group cannot be added while a captured "
                                           r"training step .* release\(\) it first"):
        opt.add_param_group({"params": net[1].parameters()[1:]})
    assert len(opt.params) == 1
    step.release()
    opt.add_param_group({"params": net[1].parameters()[1:]})
    assert len(opt.param_groups) == 2


def test_defaults_as_in_pytorch(backend):
    """``optimizer.defaults`` (PyTorch's: the values a group leaves out, read by code that builds
    groups) was missing: an AttributeError. It reads the constructor's lr and every hyperparameter
    in effect, and refuses a write (which would change nothing) by raising."""
    a = _p(backend, [1.0])
    opt = SGD([a], lr=0.1, momentum=0.9)
    StepLR(opt, step_size=1, gamma=0.5).step()
    assert dict(opt.defaults) == {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}
    opt.momentum = 0.5
    assert opt.defaults["momentum"] == 0.5
    with pytest.raises(TypeError):
        opt.defaults["lr"] = 1.0
    assert Adam([a], lr=0.01, betas=(0.8, 0.9)).defaults["betas"] == (0.8, 0.9)


def test_defaults_is_a_dict_that_logs_copies_and_pickles(backend):
    """``optimizer.defaults`` is a dict, as PyTorch's: code that logs the hyperparameters
    (json.dumps, a run's config), copies them (copy.deepcopy) or pickles them takes it; the read-only
    view it was refused all three ('mappingproxy' is not JSON serializable, cannot be pickled). A
    write is still refused, and a copy is a plain dict to change."""
    import copy
    import json
    import pickle
    opt = SGD([_p(backend, [1.0])], lr=0.1, momentum=0.9)
    assert isinstance(opt.defaults, dict)
    want = {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}
    assert json.loads(json.dumps(opt.defaults)) == want
    for copied in (copy.deepcopy(opt.defaults), copy.copy(opt.defaults), pickle.loads(pickle.dumps(opt.defaults))):
        assert type(copied) is dict and copied == want
        copied["lr"] = 1.0  # (the copy's own)
    assert opt.defaults["lr"] == 0.1
    for write in (lambda d: d.__setitem__("lr", 1.0), lambda d: d.update(lr=1.0), lambda d: d.pop("lr"),
                  lambda d: d.setdefault("eps", 1.0), lambda d: d.clear(), lambda d: d.__delitem__("lr"),
                  lambda d: d.popitem(), lambda d: d.__ior__({"lr": 1.0})):
        with pytest.raises(TypeError, match="set optimizer.momentum"):
            write(opt.defaults)
    assert dict(opt.defaults) == want


def test_a_group_appended_to_param_groups_is_refused_naming_add_param_group(backend):
    """``opt.param_groups.append({...})`` appended to a list made for that read and nothing else: the
    group never trained, without a word. The list refuses a change, naming add_param_group."""
    a, b = _p(backend, [1.0]), _p(backend, [2.0])
    opt = SGD([a], lr=0.1)
    for groups in (opt.param_groups, Chain(opt).param_groups):
        for change in (lambda: groups.append({"params": [b]}), lambda: groups.extend([{"params": [b]}]),
                       lambda: groups.pop(), lambda: groups.__delitem__(0), lambda: groups.__iadd__([{}])):
            with pytest.raises(TypeError, match=r"param_groups is made afresh .* add a group with "
                                                r"optimizer.add_param_group"):
                change()
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["params"] == [a]
    assert type(__import__("copy").copy(opt.param_groups)) is list


def test_a_key_a_group_lacks_is_named_with_the_keys_it_has(backend):
    """``g['initial_lr']`` (PyTorch's schedulers set it; hand-written warm-ups read it) raised a bare
    KeyError 'initial_lr'; it now names the group's keys and where gpuconv keeps that lr."""
    opt = SGD([{"params": [_p(backend, [1.0])], "lr": 0.5}], lr=0.1)
    with pytest.raises(KeyError, match=r"a parameter group has params, lr, momentum, nesterov, weight_decay; not "
                                       r"'initial_lr'; .* optimizer.group_initial_lr\(0\)"):
        opt.param_groups[0]["initial_lr"]
    assert opt.param_groups[0].get("initial_lr") is None and opt.group_initial_lr(0) == 0.5

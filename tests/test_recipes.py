"""Recipes: the RECIPES dict and its CLI settings, airbench's decoupled SGD groups, the triangular
schedule, the lookahead inside the trainer, the whitening-bias epochs, test-time augmentation."""
from __future__ import annotations

import re

import numpy as np
import pytest

from gpuconv import cli, models, ops
from gpuconv.data import DeviceLoader
from gpuconv.lookahead import Lookahead, airbench_decay
from gpuconv.optim import SGD, TriangularLR
from gpuconv.recipes import RECIPES, airbench_param_groups, get_recipe
from gpuconv.trainer import Trainer, check_tta, evaluate, tta_logits


def _settings(*argv):
    return cli._settings(cli.build_parser().parse_args(["train", *argv]))


def test_recipe_settings_and_overrides():
    s = _settings("--recipe", "airbench94")
    assert s["model"] == "airbench94" and s["batch_size"] == 1024 and s["label_smoothing"] == 0.2
    assert s["schedule"] == "triangular" and s["lookahead"] == 5 and s["tta"] == 2
    assert s["padding"] == 2 and s["padding_mode"] == "reflect" and s["flip"] == "alternate"
    s = _settings("--recipe", "airbench94", "--epochs", "3", "--batch-size", "256", "--tta", "1")
    assert (s["epochs"], s["batch_size"], s["tta"], s["lr"]) == (3, 256, 1, 11.5)
    # the default recipe and the models' own recipes are unchanged
    assert _settings()["recipe"] == "three_layer" and _settings()["lr"] == 0.02
    fast = _settings("--model", "fast")
    assert fast["recipe"] == "fast" and fast["batch_size"] == 512 and fast["padding_mode"] == "zeros"
    assert all(r["model"] in cli.MODELS for r in RECIPES.values()) and set(cli.MODELS) <= set(RECIPES)
    known = re.escape(", ".join(sorted(RECIPES)))
    with pytest.raises(ValueError, match=f"recipe .nope. is not known: use one of {known}$"):
        get_recipe("nope")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--tta", "3"])


def test_airbench95_and_airbench96_recipes():
    """The published 95% and 96% recipes: airbench95 is airbench94's network wider (128, 384, 384) for
    15 epochs at lr 10; airbench96 its own network for 37 epochs, a 10% warmup from 0.2 and a decay
    to 0, 4-pixel translations and 12-pixel cutout. --width scales a network in the recipe's ratio."""
    s = _settings("--recipe", "airbench95")
    assert (s["model"], s["epochs"], s["lr"], s["weight_decay"]) == ("airbench94", 15, 10.0, 0.0153)
    assert s["model_kwargs"] == {"widths": [128, 384, 384]} and s["cutout"] == 0 and s["schedule_kwargs"] == {}
    s = _settings("--recipe", "airbench96")
    assert (s["model"], s["epochs"], s["lr"], s["weight_decay"], s["momentum"]) == ("airbench96", 37, 9.0, 0.012, 0.85)
    assert (s["padding"], s["padding_mode"], s["flip"], s["cutout"], s["tta"]) == (4, "reflect", "alternate", 12, 2)
    assert s["schedule"] == "triangular" and s["lookahead"] == 5 and s["whiten_bias_epochs"] == 3
    assert _settings("--recipe", "airbench96", "--cutout", "0")["cutout"] == 0
    assert _settings("--recipe", "airbench96", "--schedule", "cosine")["schedule_kwargs"] == {}  # its own arguments
    assert _settings("--model", "airbench96")["recipe"] == "airbench96"
    sched = cli._schedule(s["schedule"], SGD(models.airbench94(widths=(2, 4, 4)).parameters(), lr=1.0), 1.0, 100,
                          s["schedule_kwargs"])
    assert [sched.lr_at(k) for k in (0, 5, 10, 55, 100)] == pytest.approx([0.2, 0.6, 1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="schedule 'onecycle' takes no arguments"):
        cli._schedule("onecycle", sched.optimizer, 1.0, 100, {"end": 0.0})
    # --width: the first block's width, the others in the recipe's ratio
    widths = lambda name, **kw: cli.build_model(name, **kw)[1]["kwargs"]["widths"]  # noqa: E731
    assert widths("airbench94", width=8) == [8, 32, 32]
    assert widths("airbench94", width=8, model_kwargs=RECIPES["airbench95"]["model_kwargs"]) == [8, 24, 24]
    assert widths("airbench96", width=8) == [8, 24, 32]
    assert cli.build_model("airbench96")[1]["kwargs"] == {"seed": 0}  # the published widths
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--cutout", "-1"])


def test_resnet18_recipe_is_kuanglius():
    """kuangliu/pytorch-cifar's ResNet-18 training: SGD lr 0.1, momentum 0.9 without Nesterov, weight
    decay 5e-4, batch 128, cosine annealing from 0.1 to 0 over the 200 epochs without warmup, random
    crop (4 zero pixels) and flip. The optimizer the CLI builds steps plain momentum (the other SGD
    recipes keep Nesterov), and the schedule starts at the full lr (the default cosine warms up)."""
    s = _settings("--recipe", "resnet18")
    assert s == _settings("--model", "resnet18")
    assert (s["model"], s["epochs"], s["batch_size"], s["lr"], s["weight_decay"], s["momentum"]) == \
        ("resnet18", 200, 128, 0.1, 5e-4, 0.9)
    assert s["optimizer"] == "sgd" and s["nesterov"] is False and s["schedule"] == "cosine"
    assert (s["augment"], s["padding"], s["padding_mode"], s["flip"], s["cutout"]) == (True, 4, "zeros", "random", 0)
    assert (s["label_smoothing"], s["lookahead"], s["tta"], s["width"]) == (0.0, None, 0, 64)
    net = models.resnet18(width=2)
    opt, sched, _ = cli._recipe_setup(s, net, None, steps_per_epoch=10)
    assert opt.param_groups[0]["nesterov"] is False and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[0]["weight_decay"] == 5e-4
    total = 200 * 10
    assert sched.lr_at(0) == 0.1 and sched.lr_at(total // 2) == pytest.approx(0.05) and sched.lr_at(total) == 0.0
    assert sched.lr_at(total // 4) == pytest.approx(0.05 * (1 + np.cos(np.pi / 4)))
    # the other SGD recipes: Nesterov, and the cosine (--schedule cosine) with its 5% warmup
    fast = _settings("--model", "fast", "--schedule", "cosine")
    opt, sched, _ = cli._recipe_setup(fast, models.fast_net(width=2), None, steps_per_epoch=10)
    assert opt.param_groups[0]["nesterov"] is True and sched.warmup_steps == fast["epochs"] * 10 // 20
    # --schedule onecycle drops the cosine's arguments; a cosine argument it does not take is named
    assert _settings("--recipe", "resnet18", "--schedule", "onecycle")["schedule_kwargs"] == {}
    with pytest.raises(ValueError, match="schedule 'cosine' takes warmup_fraction alone"):
        cli._schedule("cosine", opt, 0.1, 100, {"end": 0.0})
    with pytest.raises(ValueError, match=r"warmup_fraction must be a number in \[0, 1\), got 1.5"):
        cli._schedule("cosine", opt, 0.1, 100, {"warmup_fraction": 1.5})


@pytest.mark.parametrize("name", ["mobilenetv2", "senet18"])
def test_kuangliu_recipes_are_resnet18s(name):
    """kuangliu/pytorch-cifar's main.py trains MobileNetV2 and SENet18 as it trains ResNet-18: SGD lr
    0.1, momentum 0.9 without Nesterov, weight decay 5e-4 (every parameter, SENet's gates included),
    batch 128, cosine annealing from 0.1 to 0 over 200 epochs without warmup, random crop (4 zero
    pixels) and flip; no width (his nets have none)."""
    s = _settings("--recipe", name)
    assert s == _settings("--model", name)
    assert (s["model"], s["epochs"], s["batch_size"], s["lr"], s["weight_decay"], s["momentum"]) == \
        (name, 200, 128, 0.1, 5e-4, 0.9)
    assert s["optimizer"] == "sgd" and s["nesterov"] is False and s["schedule"] == "cosine"
    assert s["schedule_kwargs"] == {"warmup_fraction": 0.0}
    assert (s["augment"], s["padding"], s["padding_mode"], s["flip"], s["cutout"]) == (True, 4, "zeros", "random", 0)
    assert (s["label_smoothing"], s["lookahead"], s["tta"]) == (0.0, None, 0)
    assert RECIPES[name]["precision"] == "auto"  # (bf16 on a GPU with bfloat16 tensor cores; fp32 here)
    assert "width" not in RECIPES[name] and s.get("width") is None
    resnet = _settings("--recipe", "resnet18")
    same = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "nesterov", "schedule",
            "schedule_kwargs", "augment", "padding", "padding_mode", "flip", "label_smoothing", "drop_last")
    assert {k: s[k] for k in same} == {k: resnet[k] for k in same}
    net = getattr(models, name)()
    opt, sched, _ = cli._recipe_setup(s, net, None, steps_per_epoch=10)
    assert opt.param_groups[0]["nesterov"] is False and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[0]["weight_decay"] == 5e-4
    assert sum(p.size for g in opt.param_groups for p in g["params"]) == net.num_parameters()
    total = 200 * 10
    assert sched.lr_at(0) == 0.1 and sched.lr_at(total // 2) == pytest.approx(0.05) and sched.lr_at(total) == 0.0
    assert sched.lr_at(total // 4) == pytest.approx(0.05 * (1 + np.cos(np.pi / 4)))

def test_a_cosine_schedule_of_one_step_runs_it_at_the_full_lr():
    """--schedule cosine on a run of one step (one epoch of one batch) stopped with "warmup_steps must
    be an integer in [0, total_steps=1), got 1": the 5% warmup's one step was all the run had. It
    steps at the lr; two steps and more keep their warmup step."""
    opt = SGD(models.seed_net().parameters(), lr=0.1)
    assert cli._schedule("cosine", opt, 0.1, 1).lr_at(0) == 0.1
    two = cli._schedule("cosine", opt, 0.1, 2)
    assert two.warmup_steps == 1 and two.lr_at(0) == 0.1 and two.lr_at(1) == 0.1
    assert cli._schedule("cosine", opt, 0.1, 100).warmup_steps == 5


class _FakeCupy:
    """Stands in for CuPy where only a GPU's compute capability is asked."""

    def __init__(self, cc):
        self.cuda = type("cuda", (), {"Device": lambda _, i=0: type("D", (), {"compute_capability": cc})()})()


def test_bf16_on_a_gpu_with_a_numpy_cupy_cannot_hold_it_in_is_refused_with_the_fix(monkeypatch):
    """CuPy takes ml_dtypes' bfloat16 only with NumPy >= 2.1.2: before it, bf16 on a GPU (named, or
    auto's choice) is refused up front, naming the upgrade and the other precisions; off the GPU,
    and in fp16, nothing changes."""
    from gpuconv import amp, backend
    monkeypatch.setattr(backend, "require_cupy", lambda: _FakeCupy("90"))
    cuda = backend.Device("cuda")
    monkeypatch.setattr(np, "__version__", "2.1.1")
    for precision, auto in (("bf16", ""), ("auto", r" \(what auto chooses on this GPU\)")):
        with pytest.raises(RuntimeError, match=rf"precision bf16{auto} on cuda(:0)? needs NumPy >= 2.1.2.*this is NumPy "
                                               r"2.1.1: pip install -U 'numpy>=2.1.2'.*--precision fp16 or fp32"):
            amp.resolve_precision(precision, cuda)
    assert amp.resolve_precision("bf16", "cpu") == amp.resolve_precision("bf16", "sim") == "bf16"
    assert amp.resolve_precision("fp16", cuda) == "fp16"
    for version in ("2.1.2", "2.3.0rc1", "3.0.0"):
        monkeypatch.setattr(np, "__version__", version)
        assert amp.resolve_precision("bf16", cuda) == amp.resolve_precision("auto", cuda) == "bf16"


@pytest.mark.parametrize("cc, want", [("90", "bf16"), ("80", "bf16"), ("75", "fp16"), ("70", "fp32")])
def test_precision_auto_is_bf16_on_a_gpu_with_bfloat16_tensor_cores(monkeypatch, cc, want):
    """'auto' is bf16 from compute capability 8.0, fp16 on 7.5 (a T4: float16 tensor cores only),
    fp32 below and off the GPU."""
    from gpuconv import amp, backend
    monkeypatch.setattr(backend, "require_cupy", lambda: _FakeCupy(cc))
    cuda = backend.Device("cuda")
    assert amp.resolve_precision("auto", cuda) == want
    assert amp.resolve_precision("auto", "cpu") == amp.resolve_precision("auto", "sim") == "fp32"
    assert amp.resolve_precision("fp16", cuda) == "fp16"  # a named precision stays as named
    with pytest.raises(ValueError, match="precision='bf32': use one of fp32, tf32, bf16, fp16 .*or 'auto'"):
        amp.resolve_precision("bf32", cuda)
    args = lambda *argv: cli.build_parser().parse_args(["train", *argv])  # noqa: E731
    # the speed recipes say auto; the small nets train in fp32 everywhere; a flag overrides either
    for recipe in ("airbench94", "airbench94_muon", "airbench95", "airbench96", "fast", "mobilenetv2", "senet18"):
        assert RECIPES[recipe]["precision"] == "auto"
        assert cli._settings(args("--recipe", recipe), cuda)["precision"] == want
        assert cli._settings(args("--recipe", recipe), backend.Device("cpu"))["precision"] == "fp32"
        assert cli._settings(args("--recipe", recipe, "--precision", "tf32"), cuda)["precision"] == "tf32"
    assert cli._settings(args("--model", "three_layer"), cuda)["precision"] == "fp32"
    assert cli._settings(args("--model", "three_layer", "--precision", "auto"), cuda)["precision"] == want
    assert _settings("--recipe", "airbench94", "--device", "cpu")["precision"] == "fp32"


def test_airbench_groups_are_decoupled():
    net = models.airbench94(widths=(4, 8, 8))
    groups, lr = airbench_param_groups(net, lr=11.5, weight_decay=0.0153, momentum=0.85, batch_size=1024)
    kilostep = 1024 * (1 + 1 / 0.15)
    assert lr == pytest.approx(11.5 / kilostep * 1024)
    norm, other = groups
    assert norm["lr"] == pytest.approx(64 * lr) and other["lr"] == pytest.approx(lr)
    # the same decay per step for every parameter, whatever its lr
    decay = 0.0153 * 1024 / kilostep
    assert norm["lr"] * norm["weight_decay"] == pytest.approx(decay)
    assert other["lr"] * other["weight_decay"] == pytest.approx(decay)
    assert len(norm["params"]) == 12 and len(norm["params"]) + len(other["params"]) == len(net.parameters())
    # half the batch: half the per-step lr and decay (lr per 1024 examples)
    _, half = airbench_param_groups(net, 11.5, 0.0153, 0.85, 512)
    assert half == pytest.approx(lr / 2)


def test_triangular_schedule():
    p = models.seed_net().parameters()
    sched = TriangularLR(SGD(p, lr=2.0), total_steps=100)
    lrs = [sched.lr_at(s) for s in (0, 11, 23, 50, 100, 120)]
    assert lrs[0] == pytest.approx(0.4) and lrs[2] == pytest.approx(2.0)
    assert lrs[1] == pytest.approx(2.0 * (0.2 + 0.8 * 11 / 23))
    assert lrs[3] == pytest.approx(2.0 * (1 - 0.93 * 27 / 77)) and lrs[4] == pytest.approx(0.14) == lrs[5]
    # airbench94's own table, np.interp over [0, int(0.23 * total), total], where int() and round()
    # of the warm-up length differ (7 * 0.23 = 1.61)
    for total in (7, 10, 97):
        sched = TriangularLR(SGD(p, lr=1.0), total_steps=total)
        want = np.interp(np.arange(total + 1), [0, int(0.23 * total), total], [0.2, 1.0, 0.07])
        np.testing.assert_allclose([sched.lr_at(s) for s in range(total + 1)], want, rtol=1e-12)


def test_tta_levels():
    net = models.airbench94(widths=(2, 4, 4))
    net.eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(tta_logits(net, x, 0), net(x))
    mirror = lambda a: (net(a) + net(np.ascontiguousarray(a[..., ::-1]))) / 2  # noqa: E731
    np.testing.assert_allclose(tta_logits(net, x, 1), mirror(x), rtol=1e-6)
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    want = 0.5 * mirror(x) + 0.25 * (mirror(pad[:, :, :32, :32]) + mirror(pad[:, :, 2:, 2:]))
    np.testing.assert_allclose(tta_logits(net, x, 2), want, rtol=1e-5, atol=1e-6)
    assert check_tta(True) == 1
    with pytest.raises(ValueError, match=r"tta=3 must be a test-time augmentation level: 0 \(none\)"):
        check_tta(3)


def test_recipe_training_run_lookahead_and_whitening_bias(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (48, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 48)
    s = dict(get_recipe("airbench94"), batch_size=16, epochs=4, whiten_bias_epochs=1)
    net = models.airbench94(widths=(4, 8, 8))
    loader = DeviceLoader(images, labels, s["batch_size"], augment=True, padding=2, padding_mode="reflect",
                          flip="alternate", device="cpu")
    opt, sched, extras = cli._recipe_setup(s, net, images, len(loader))
    assert not net["whiten"].weight.requires_grad and np.abs(net["whiten"].weight.data).sum() > 0
    w_whiten = net["whiten"].weight.data.copy()
    seen = []
    start = extras["epoch_start"]
    extras["epoch_start"] = lambda e: (start(e), seen.append(net["whiten"].bias.requires_grad))
    trainer = Trainer(net, opt, sched, label_smoothing=0.2, progress=False, **extras)
    decays, update = [], trainer.lookahead.update
    trainer.lookahead.update = lambda decay: (decays.append(decay), update(decay))
    trainer.fit(loader, 1)
    assert net["whiten"].bias.grad is not None
    trainer.fit(loader, s["epochs"])
    # every 5 steps of the 12 (4 epochs of 3 batches) with airbench's decay, then onto the average
    assert decays == [pytest.approx(airbench_decay(5, 12)), pytest.approx(airbench_decay(10, 12)), 1.0]
    assert seen == [True, False, False, False]  # trained the first epoch only
    assert net["whiten"].bias.grad is None  # frozen: no gradient kept (the lookahead still averages it)
    np.testing.assert_array_equal(net["whiten"].weight.data, w_whiten)  # frozen throughout
    # the run ends on the weight average
    for name, p in net.named_parameters():
        np.testing.assert_array_equal(p.data, trainer.lookahead.ema[name])
    result = evaluate(net, DeviceLoader(images, labels, 16, shuffle=False, device="cpu"), tta=2)
    assert np.isfinite(result["loss"]) and result["n"] == 48


def test_muon_recipe_builds_a_chain_and_trains():
    from gpuconv.optim import SGD, Chain, Muon
    s = dict(get_recipe("airbench94_muon"), batch_size=16, epochs=2)
    assert _settings("--recipe", "airbench94_muon")["batch_size"] == 2000
    # its own head: divided by its width, from unit-std weights (airbench94's: 1/9, Kaiming init);
    # its whitening bias from PyTorch's default draw, U(-1/sqrt(12), 1/sqrt(12)) (airbench94's: zeros)
    assert s["model_kwargs"] == {"scaling_factor": None, "head_std": 1.0, "whiten_bias": "uniform"}
    assert _settings("--recipe", "airbench94_muon", "--model", "fast")["model_kwargs"] == {}  # another network
    muon_net, _ = cli.build_model("airbench94", width=4, model_kwargs=s["model_kwargs"])
    assert muon_net["scale"].factor == pytest.approx(1 / 16) and float(muon_net["fc"].weight.data.std()) == \
        pytest.approx(1.0, rel=1e-5)
    plain = models.airbench94(widths=(4, 16, 16))
    assert plain["scale"].factor == pytest.approx(1 / 9) and float(plain["fc"].weight.data.std()) < 0.5
    bias = muon_net["whiten"].bias.data
    assert (plain["whiten"].bias.data == 0).all() and np.abs(bias).max() <= 12 ** -0.5 and bias.std() > 0.1
    with pytest.raises(ValueError, match="whiten_bias='random' must be 'zeros'"):
        models.airbench94(widths=(4, 8, 8), whiten_bias="random")
    np.testing.assert_allclose(muon_net["fc"].weight.data / float(muon_net["fc"].weight.data.std()),
                               plain["fc"].weight.data / float(plain["fc"].weight.data.std()), rtol=1e-5)
    with pytest.raises(ValueError, match="head_std must be positive"):
        models.airbench94(widths=(4, 8, 8), head_std=0.0)
    net = models.airbench94(widths=(4, 8, 8))
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 32)
    loader = DeviceLoader(images, labels, 16, augment=True, padding=2, padding_mode="reflect", flip="alternate",
                          device="cpu")
    opt, sched, extras = cli._recipe_setup(s, net, images, len(loader))
    assert isinstance(opt, Chain) and "lookahead" not in extras
    muon, sgd = opt.optimizers
    assert isinstance(muon, Muon) and isinstance(sgd, SGD)
    assert all(len(p.shape) == 4 and p.requires_grad for p in muon.params) and len(muon.params) == 6
    assert sgd.hyper(0)["lr"] == pytest.approx(0.053 * 16) and sgd.hyper(len(sgd.params) - 1)["lr"] == pytest.approx(0.67 * 16)
    assert sgd.find_group([net["whiten"].bias]) == (sgd, 0)  # a group of its own, for its own decay
    # weight decay 2e-6 per example: 2e-6 * 16 per step for every SGD group, whatever its lr
    assert [g["lr"] * g["weight_decay"] for g in sgd.param_groups] == [pytest.approx(2e-6 * 16)] * 3
    trainer = Trainer(net, opt, sched, label_smoothing=0.2, progress=False, **extras)
    w0 = net["block1"]["conv1"].weight.data.copy()
    trainer.fit(loader, 2)
    assert not np.array_equal(w0, net["block1"]["conv1"].weight.data)
    assert opt.lr == pytest.approx(0.0) and muon.lr == pytest.approx(0.0)  # the linear decay ran out
    # the whitening bias's lr decays over its own 3 epochs (6 steps), 4 of them taken
    assert sgd.hyper(0)["lr"] == pytest.approx(0.053 * 16 * (1 - 4 / 6)) and sgd.hyper(1)["lr"] == pytest.approx(0.0)
    state = opt.state_dict()
    opt.load_state_dict(state)
    with pytest.raises(TypeError, match="Chain takes one or more gpuconv optimizers"):
        Chain()


@pytest.mark.parametrize("recipe", ["airbench94", "airbench94_muon", "airbench96"])
def test_recipe_resume_is_bit_identical(recipe, tmp_path):
    """Lookahead average, parameter groups, the Muon/SGD chain, the whitening bias's epochs (and
    muon's, its own lr decay, still running at the resume) and the augmentation's draws (cutout's
    included) all come back from the checkpoint: 2 epochs + resume to 3 == 3 epochs in one go."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 32)

    def build(out):
        s = dict(get_recipe(recipe), batch_size=16, epochs=3, whiten_bias_epochs=3 if recipe.endswith("muon") else 1)
        net, _ = cli.build_model(s["model"], width=4, model_kwargs=s["model_kwargs"])
        opt, sched, extras = cli._recipe_setup(s, net, images, 2)
        loader = DeviceLoader(images, labels, 16, augment=True, padding=s["padding"], padding_mode="reflect",
                              flip="alternate", cutout=s["cutout"], device="cpu")
        return net, Trainer(net, opt, sched, out_dir=out, label_smoothing=0.2, progress=False, **extras), loader

    net1, t1, l1 = build(tmp_path / "a")
    t1.fit(l1, 3)
    _, t2, l2 = build(tmp_path / "b")
    t2.fit(l2, 2)
    net3, t3, l3 = build(tmp_path / "b")
    t3.fit(l3, 3, resume=True)
    for (k, a), b in zip(net1.state_dict().items(), net3.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_whitening_bias_lr_setting_is_checked():
    images = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    for recipe, value, match in (("airbench94_muon", "linear", r"whiten_bias_lr 'linear' must be 'schedule' or "
                                                                r"'decay'"),
                                 ("airbench94", "decay", r"'decay' needs the whitening bias in a group of its own: "
                                                         r"the 'muon' optimizer gives it one")):
        s = dict(get_recipe(recipe), batch_size=16, epochs=1, whiten_bias_lr=value)
        net, _ = cli.build_model(s["model"], width=4, model_kwargs=s["model_kwargs"])
        with pytest.raises(ValueError, match=match):
            cli._recipe_setup(s, net, images, 1)


def test_a_lookahead_average_is_made_on_the_models_gpu(monkeypatch):
    """CuPy's copy() makes its copy on the current device: the average of a model on cuda:1 built
    while cuda:0 was current landed on GPU 0, and every update was refused as arrays on two GPUs.
    CuPy is faked: the parameters 'on cuda:1' are a NumPy subclass whose copy records the current
    device."""
    from conftest import fake_cupy_second_gpu
    from gpuconv.layers import Linear

    made_on = []

    class OnGpu(np.ndarray):
        def copy(self, *args, **kwargs):
            made_on.append(current[0])
            return np.asarray(self).copy(*args, **kwargs).view(OnGpu)

    net = Linear(3, 2)
    for p in net.parameters():
        p.data = p.data.view(OnGpu)
    _, current = fake_cupy_second_gpu(monkeypatch, OnGpu)
    Lookahead(net)
    assert made_on == [1, 1] and current == [0]

"""The gpuconv command end to end on the real subset: train, evaluate --json, resume, Ctrl-C, info, bench."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from gpuconv import checkpoint as ckpt
from gpuconv import cli
from gpuconv.recipes import get_recipe

from conftest import REPO, SUBSET


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One quick CLI training run shared by the tests below (seed_net, 1000 images, 3 epochs)."""
    if not (SUBSET / "data_batch_1").exists():
        pytest.fail(f"the CIFAR-10 subset is missing at {SUBSET}; set GPUCONV_TEST_DATA")
    out = tmp_path_factory.mktemp("run")
    rc = cli.main(["train", "--model", "seed", "--epochs", "3", "--limit", "1000", "--data", str(SUBSET),
                   "--out", str(out), "--no-progress", "--log-every", "4"])
    assert rc == 0
    return out


def test_train_writes_checkpoint_and_metrics(trained):
    arrays = ckpt.load_checkpoint(trained / "checkpoint.npz")  # allow_pickle=False inside
    config = ckpt.read_config(arrays)
    assert config["model"] == "seed" and config["constructor"] == "seed_net" and config["kwargs"] == {"seed": 0}
    assert config["train_args"]["limit"] == 1000 and config["train_args"]["val_split"] == ["batch", 5]
    assert len(config["classes"]) == 10
    assert int(arrays["meta/epoch"]) == 3 and int(arrays["meta/step"]) == 3 * 16  # 1000 / 64 -> 16 batches
    lines = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert all(0 <= r["val_acc"] <= 1 for r in epochs)


def test_a_limit_past_the_training_images_says_it_trains_on_all_of_them(tmp_path, capsys, monkeypatch):
    """--limit larger than the training set was capped without a word: the run said nothing of
    training on fewer images than asked for. It says so, and trains on all of them."""
    monkeypatch.setattr("gpuconv.plots.plot_curves", lambda history, path: None)
    rc, _, err = run(["train", "--model", "seed", "--epochs", "1", "--limit", "999999", "--data", SUBSET,
                      "--device", "cpu", "--out", tmp_path, "--no-progress"], capsys)
    assert rc == 0, err
    assert "note: --limit 999999 is more than the 4153 training images there are: training on all 4153" in err


def test_train_on_the_cpu_keeps_freed_memory_for_the_next_step(tmp_path, capsys, monkeypatch):
    """A CPU run has glibc keep its freed arrays' memory (gpuconv._hostmem): no page faults per step."""
    from gpuconv import _hostmem
    calls = []
    monkeypatch.setattr(_hostmem, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr("gpuconv.plots.plot_curves", lambda history, path: None)  # (matplotlib's import: a second)
    rc, _, _ = run(["train", "--model", "seed", "--epochs", "1", "--limit", "20", "--val-split", "none", "--data", SUBSET,
                    "--device", "cpu", "--out", tmp_path, "--no-progress"], capsys)
    assert rc == 0 and calls == [1]


def test_train_prints_accuracy_and_says_how_it_validates(tmp_path, capsys):
    rc, out, err = run(["train", "--model", "seed", "--epochs", "1", "--limit", "300", "--data", SUBSET,
                        "--out", tmp_path, "--no-progress"], capsys)
    assert rc == 0
    assert "no test_batch" in err and "data_batch_5 held out" in err
    assert "epoch 1: train loss" in err and "epoch 1/1" not in err  # --no-progress: summary lines, no bar
    acc = float(out.split("accuracy")[-1])
    assert 0.0 <= acc <= 1.0
    assert (out + err).count("accuracy 0.") + (out + err).count("accuracy: 0.") == 1  # said once


def test_the_final_evaluation_at_level_0_is_the_last_validation_not_a_second_pass(tmp_path, capsys, monkeypatch):
    """At test-time augmentation level 0 the final evaluation is the validation fit() ran after the
    last epoch (same weights, images, precision): its numbers are printed, not computed again. At
    another level, or when a resume had nothing left to train, it runs."""
    import gpuconv.trainer as trainer_mod
    calls = []
    evaluate = trainer_mod.evaluate
    monkeypatch.setattr(trainer_mod, "evaluate", lambda *a, **kw: calls.append(kw.get("tta")) or evaluate(*a, **kw))
    argv = ["train", "--model", "seed", "--epochs", "2", "--limit", "100", "--data", SUBSET, "--no-progress",
            "--device", "cpu", "--out"]
    rc, out, err = run(argv + [tmp_path], capsys)
    assert rc == 0, err
    assert calls == [0, 0]  # one validation per epoch, no third pass
    last = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert f"accuracy {last['val_acc']:.4f}" in out and f"level 0): loss {last['val_loss']:.4f}" in err
    calls.clear()
    rc, out, err = run(argv + [tmp_path, "--resume"], capsys)  # nothing to do: evaluated, as it was validated
    assert rc == 0 and "nothing to do" in err and calls == [0] and f"accuracy {last['val_acc']:.4f}" in out
    calls.clear()
    rc, _, err = run(argv + [tmp_path / "tta", "--tta", "1"], capsys)
    assert rc == 0 and calls == [0, 0, 1], err


def test_a_python_warning_reads_as_the_commands_own(tmp_path):
    """A warning raised inside gpuconv (here: a lookahead that never updates in 1 step) printed
    "gpuconv/cli.py:671: RuntimeWarning: ..." and then that line's source code,
    "trainer = Trainer(model, opt, ...)"; it now reads "warning: ..." as the command's own do."""
    proc = subprocess.run([sys.executable, "-m", "gpuconv", "train", "--recipe", "airbench94", "--width", "4",
                           "--epochs", "1", "--limit", "20", "--batch-size", "20", "--val-split", "none",
                           "--data", str(SUBSET), "--out", str(tmp_path), "--device", "cpu", "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\nwarning: lookahead: its first update comes at step every=5" in proc.stderr, proc.stderr
    assert "RuntimeWarning" not in proc.stderr and "Trainer(" not in proc.stderr, proc.stderr
    before = warnings.formatwarning
    assert cli.main(["summary", "--model", "seed"]) == 0 and warnings.formatwarning is before  # put back


def test_a_gpuconv_debug_typo_is_named_not_a_traceback(monkeypatch, capsys):
    """GPUCONV_DEBUG=maybe: main read it before the command to format warnings and raised its
    ValueError as a traceback, even for a command that failed in nothing (gpuconv info ran before);
    it is now named as the command's error, and no command runs."""
    monkeypatch.setenv("GPUCONV_DEBUG", "maybe")
    rc, out, err = run(["info"], capsys)
    assert rc == 1 and out == "" and err.startswith("gpuconv info: error: GPUCONV_DEBUG='maybe': give 1"), err


def test_piped_output_gets_plain_lines_not_bar_frames(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gpuconv", "train", "--model", "seed", "--epochs", "1", "--limit",
                           "256", "--batch-size", "32", "--log-every", "2", "--data", str(SUBSET), "--out",
                           str(tmp_path), "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr and "batch/s" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("epoch 1 step ")]
    assert len(lines) == 4 and "img/s" in lines[0]  # 8 steps, a line every 2


def test_evaluate_json_on_the_held_out_batch(trained, capsys):
    rc, out, err = run(["evaluate", "--checkpoint", trained / "checkpoint.npz", "--data", SUBSET, "--json",
                        "--device", "cpu"], capsys)
    assert rc == 0
    result = json.loads(out)
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["accuracy"] > 0.3  # seed_net after 3 epochs on 1000 images (~0.4); chance is 0.1
    assert result["n"] == 1017 and "data_batch_5" in result["split"]
    assert result["held_out"] is True and result["split_name"] == "data_batch_5" and result["precision"] == "fp32"
    conf = np.array(result["confusion"])
    assert conf.shape == (10, 10) and conf.sum() == 1017
    assert result["accuracy"] == pytest.approx(np.trace(conf) / 1017)
    assert list(result["per_class"]) == result["classes"] and "airplane" in result["classes"]
    assert "no test_batch" in err
    # The last validation of training saw the same images with the same weights.
    last = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["val_acc"] == pytest.approx(result["accuracy"])


def test_a_bare_tta_before_an_input_says_to_write_the_level(trained, capsys):
    """`predict --tta cat.png` read the file as --tta's level and said only that it is not one; the
    error now says to write the level out before an input."""
    image = trained / "img.npy"
    np.save(image, np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(SystemExit) as exc:
        cli.main(["predict", "--checkpoint", str(trained / "checkpoint.npz"), "--tta", str(image)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"write the level before an input: --tta 1 {image}" in err, err
    rc, out, _ = run(["predict", "--checkpoint", trained / "checkpoint.npz", "--tta", "1", image], capsys)
    assert rc == 0 and "img.npy[0]:" in out


def test_evaluate_without_data_takes_the_runs_own(trained, capsys, monkeypatch, tmp_path):
    """evaluate without --data looked in $GPUCONV_DATA or ~/.cache/gpuconv and downloaded the
    163 MB release there, though the checkpoint records where its training data is: the split
    the run held out is there, and train --resume continues on it."""
    from gpuconv.data import cifar10
    monkeypatch.delenv("GPUCONV_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(cifar10, "download_cifar10", lambda *a, **k: pytest.fail("evaluate downloaded the data"))
    rc, out, err = run(["evaluate", "--checkpoint", trained / "checkpoint.npz", "--json"], capsys)
    assert rc == 0 and f"evaluating on the run's data: {SUBSET.resolve()}" in err, err
    alone = json.loads(out)
    rc, out, _ = run(["evaluate", "--checkpoint", trained / "checkpoint.npz", "--json", "--data", SUBSET], capsys)
    assert rc == 0 and json.loads(out) == alone
    # the run's data before $GPUCONV_DATA, as train --resume takes it: its held-out split is there
    monkeypatch.setenv("GPUCONV_DATA", str(tmp_path / "other"))
    rc, out, err = run(["evaluate", "--checkpoint", trained / "checkpoint.npz", "--json"], capsys)
    assert rc == 0 and f"evaluating on the run's data: {SUBSET.resolve()}" in err and json.loads(out) == alone, err


def test_predict_names_an_input_that_holds_no_images(trained, capsys, tmp_path):
    """An .npy of 0 images printed nothing at all for it (and nothing at all when alone), exit 0."""
    empty, one = tmp_path / "empty.npy", tmp_path / "one.npy"
    np.save(empty, np.zeros((0, 32, 32, 3), np.uint8))
    np.save(one, np.zeros((1, 32, 32, 3), np.uint8))
    rc, out, err = run(["predict", "--checkpoint", trained / "checkpoint.npz", one, empty], capsys)
    assert rc == 0 and out.startswith(f"{one}[0]: ") and len(out.splitlines()) == 1
    assert f"note: {empty} holds an array of 0 images: nothing to predict for it" in err and str(one) not in err


def test_predict_takes_an_input_with_a_tilde_for_the_images_it_holds(trained, capsys, tmp_path, monkeypatch):
    """load_images reads '~/one.npy' in the home directory: its one image is predicted, and the input
    is not said to hold no images."""
    monkeypatch.setenv("HOME", str(tmp_path))
    np.save(tmp_path / "one.npy", np.zeros((1, 32, 32, 3), np.uint8))
    rc, out, err = run(["predict", "--checkpoint", trained / "checkpoint.npz", "~/one.npy"], capsys)
    assert rc == 0 and out.startswith(f"{tmp_path / 'one.npy'}[0]: ") and len(out.splitlines()) == 1
    assert "0 images" not in err


def test_evaluate_tta_levels(trained, capsys):
    accs = []
    for flags in ([], ["--tta"], ["--tta", "2"]):
        rc, out, err = run(["evaluate", "--checkpoint", trained / "checkpoint.npz", "--data", SUBSET, "--json",
                            "--device", "cpu", *flags], capsys)
        assert rc == 0, err
        accs.append(json.loads(out)["loss"])
    assert len(set(accs)) == 3  # three different sets of views
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["evaluate", "--checkpoint", "x", "--tta", "5"])


def test_train_out_with_a_tilde_is_in_the_home_directory_for_the_command_as_for_the_trainer(tmp_path, capsys,
                                                                                            monkeypatch):
    """--out=~/run (no shell expands a ~ after '='): the Trainer wrote into the home directory while
    the command locked, checked and resumed ./~/run, so --resume found no checkpoint there."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    argv = ["train", "--model", "seed", "--epochs", "1", "--limit", "300", "--val-split", "none", "--data", SUBSET,
            "--out=~/run", "--no-progress"]
    rc, _, err = run(argv, capsys)
    assert rc == 0, err
    assert (home / "run" / "checkpoint.npz").exists() and not list(cwd.iterdir())
    rc, _, err = run([*argv, "--resume"], capsys)
    assert rc == 0 and "resuming from" in err, err


def test_evaluate_says_when_the_images_were_trained_on(tmp_path, capsys):
    rc, _, err = run(["train", "--model", "seed", "--epochs", "1", "--limit", "300", "--val-split", "none",
                      "--data", SUBSET, "--out", tmp_path, "--no-progress"], capsys)
    assert rc == 0, err
    assert "(300 images, 1 epoch, batch" in err  # (not "1 epochs")
    # no validation, so no best epoch: the help and the README say best.npz is not written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "curves.png", "metrics.jsonl"]
    rc, out, err = run(["evaluate", "--checkpoint", tmp_path / "checkpoint.npz", "--data", SUBSET, "--json"], capsys)
    result = json.loads(out)
    assert rc == 0 and result["held_out"] is False and result["split_name"] == "data_batch_5"
    assert "held out" not in result["split"] and "a seeded sample of 300 of the training images" in err
    assert "some of which it TRAINED on" in err and "every training image" not in err  # (--limit 300)


def test_evaluate_of_a_run_limited_past_its_images_says_it_trained_on_every_one(tmp_path, capsys):
    """A --limit past the training images trains on all of them (as `gpuconv train` says): `gpuconv
    evaluate` of such a run without test_batch said it "trained on a seeded sample of 100000 of the
    training images" and evaluated on images "some of which it TRAINED on", of a directory of
    5,000. The run's limit is set in a copy of a quick run's checkpoint."""
    rc, _, err = run(["train", "--model", "seed", "--epochs", "1", "--limit", "300", "--val-split", "none",
                      "--data", SUBSET, "--out", tmp_path, "--no-progress"], capsys)
    assert rc == 0, err
    arrays = dict(ckpt.load_checkpoint(tmp_path / "checkpoint.npz"))
    config = ckpt.read_config(arrays)
    config["train_args"]["limit"] = 100000
    arrays["meta/config"] = ckpt.pack_json(config)
    ckpt.save_checkpoint(tmp_path / "all.npz", arrays)
    rc, out, err = run(["evaluate", "--checkpoint", tmp_path / "all.npz", "--data", SUBSET, "--json"], capsys)
    assert rc == 0 and json.loads(out)["held_out"] is False, err
    assert "trained on every training image (--limit 100000 takes all" in err and "which it TRAINED on" in err
    assert "seeded sample" not in err and "some of which" not in err, err


def test_a_test_only_directory_evaluates_and_refuses_to_train(trained, tmp_path, capsys):
    import shutil
    only = tmp_path / "cifar-10-batches-py"
    only.mkdir()
    shutil.copy(SUBSET / "data_batch_5", only / "test_batch")  # real images standing in for the test split
    shutil.copy(SUBSET / "batches.meta", only / "batches.meta")
    rc, out, err = run(["evaluate", "--checkpoint", trained / "checkpoint.npz", "--data", only, "--json"], capsys)
    result = json.loads(out)
    assert rc == 0, err
    assert result["held_out"] is True and result["split_name"] == "test_batch" and result["n"] == 1017
    rc, _, err = run(["train", "--data", only, "--out", tmp_path / "run"], capsys)
    assert rc == 1 and "holds test_batch alone, no training batches" in err and "incomplete" not in err


def test_a_checkpoint_whose_weights_do_not_fit_its_model_is_one_line(trained, tmp_path, capsys):
    arrays = ckpt.load_checkpoint(trained / "checkpoint.npz")
    config = ckpt.read_config(arrays)
    config.update(model="three_layer", constructor="three_layer_convnet")  # another network's config
    arrays["meta/config"] = ckpt.pack_json(config)
    bad = ckpt.save_checkpoint(tmp_path / "mixed.npz", arrays)
    rc, _, err = run(["evaluate", "--checkpoint", bad, "--data", SUBSET], capsys)
    assert rc == 1 and err.startswith("gpuconv evaluate: error:") and "Traceback" not in err
    assert "load_state_dict" in err and err.count("\n") == 1


def test_evaluate_prints_a_table(trained, capsys):
    rc, out, _ = run(["evaluate", "--checkpoint", trained / "checkpoint.npz", "--data", SUBSET], capsys)
    assert rc == 0
    assert "accuracy" in out and "per class" in out and "confusion" in out
    assert sum(1 for line in out.splitlines() if line.strip().startswith("airplane")) == 1


def test_resume_reads_settings_from_the_checkpoint(trained, tmp_path, capsys):
    import shutil
    run_dir = tmp_path / "again"
    shutil.copytree(trained, run_dir)
    rc, out, err = run(["train", "--out", run_dir, "--resume", "--data", SUBSET], capsys)
    assert rc == 0, err
    assert "training seed" in err and "1000 images" in err and "3 epochs" in err  # the stored settings
    assert "nothing to do: 3 epoch(s) already done" in err
    rc, _, err = run(["train", "--out", run_dir, "--resume", "--model", "fast", "--data", SUBSET], capsys)
    assert rc == 1 and "--model seed" in err and "--model fast" in err and "new --out" in err
    rc, _, err = run(["train", "--out", run_dir, "--resume", "--epochs", "5", "--data", SUBSET], capsys)
    assert rc == 1 and "--epochs 3" in err and "schedule" in err


def test_resume_takes_another_tta_and_records_it(trained, tmp_path, capsys):
    """Test-time augmentation is evaluation only: --resume --tta N (refused before, as a change of the
    run) evaluates at level N, says so, and the checkpoint records it, its weights and state untouched,
    so `gpuconv evaluate` takes it as the run's level; best.npz too, a checkpoint of the same run
    (it kept level 0, so evaluating it scored another thing than the run reported)."""
    import shutil
    run_dir = tmp_path / "again"
    shutil.copytree(trained, run_dir)
    before = ckpt.load_checkpoint(run_dir)
    rc, _, err = run(["train", "--out", run_dir, "--resume", "--tta", "1", "--data", SUBSET, "--no-progress"], capsys)
    assert rc == 0, err
    assert "was set to a final evaluation at test-time augmentation level 0; evaluating at --tta 1" in err
    assert "final validation (data_batch_5 held out of training (1017 images), test-time augmentation level 1)" in err
    after = ckpt.load_checkpoint(run_dir)
    assert ckpt.read_config(after)["train_args"] == dict(ckpt.read_config(before)["train_args"], tta=1)
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before if k != "meta/config")
    for name in ("checkpoint.npz", "best.npz"):
        rc, out, _ = run(["evaluate", "--checkpoint", run_dir / name, "--data", SUBSET], capsys)
        assert rc == 0 and "test-time augmentation level 1 (the run's)" in out, (name, out)


def test_a_run_extended_on_resume_records_its_new_length(tmp_path, capsys):
    """A constant learning rate may run for more epochs (--resume --epochs N): the checkpoints then hold
    the run's settings as it now runs, so a plain --resume after a stop finishes N epochs, not the old count."""
    out = tmp_path / "run"
    rc, _, err = run(["train", "--model", "seed", "--schedule", "constant", "--epochs", "1", "--limit", "100",
                      "--batch-size", "50", "--val-split", "none", "--device", "cpu", "--data", SUBSET, "--out", out,
                      "--no-progress"], capsys)
    assert rc == 0, err
    rc, _, err = run(["train", "--out", out, "--resume", "--epochs", "2", "--data", SUBSET, "--no-progress"], capsys)
    assert rc == 0, err
    assert ckpt.read_config(ckpt.load_checkpoint(out))["train_args"]["epochs"] == 2
    rc, _, err = run(["train", "--out", out, "--resume", "--data", SUBSET, "--no-progress"], capsys)
    assert rc == 0 and "nothing to do: 2 epoch(s) already done (epochs=2)" in err, err


def test_more_epochs_on_resume_only_where_nothing_was_laid_out_over_the_run(tmp_path):
    """--resume --epochs N changes a run's length: allowed for a constant lr, refused where the lookahead's
    weight average (airbench's, its decay laid out over the run's steps, the model put on it at the last)
    would then follow another plan than the one it started on."""
    def resumed(recipe):
        first = cli.build_parser().parse_args(["train", "--recipe", recipe, "--schedule", "constant", "--epochs", "2"])
        stored = {"train_args": cli._settings(first, stored_config={})}
        args = cli.build_parser().parse_args(["train", "--out", str(tmp_path), "--resume", "--epochs", "3"])
        return cli._settings(args, stored_config=stored)
    assert resumed("three_layer")["epochs"] == 3
    with pytest.raises(ValueError, match="--epochs 2 .*lookahead.*--epochs 3"):
        resumed("airbench94")


def test_resume_refuses_a_width_other_than_the_recipes_own(tmp_path):
    """An airbench run at its recipe's widths records no --width: --resume --width 8 was let through
    and failed at load_state_dict on the weights' shapes, after building the network, without naming
    the flag. It is refused as any other change of the run; a --width giving the same network is not."""
    for recipe, same in (("airbench94", "64"), ("airbench95", "128")):
        first = cli.build_parser().parse_args(["train", "--recipe", recipe])
        stored = {"train_args": cli._settings(first, stored_config={})}
        assert stored["train_args"].get("width") is None
        args = cli.build_parser().parse_args(["train", "--out", str(tmp_path), "--resume", "--width", "8"])
        with pytest.raises(ValueError, match=rf"holds a run with --width {same}, but --width 8 was given; drop --width"):
            cli._settings(args, stored_config=stored)
        args = cli.build_parser().parse_args(["train", "--out", str(tmp_path), "--resume", "--width", same])
        assert cli._settings(args, stored_config=stored)["width"] == int(same)


def test_resume_refuses_a_width_other_than_the_one_a_widthless_recipe_built(tmp_path):
    """fast_net or resnet18 trained by a recipe that sets no width (--model resnet18 --recipe
    three_layer) is built at the network's own width, 64, and records none: --resume --width 8 was
    let through and failed at load_state_dict on the weights' shapes without naming the flag. It
    is refused as any other change of the run; --width 64, the same network, is not."""
    for model in ("fast", "resnet18"):
        first = cli.build_parser().parse_args(["train", "--model", model, "--recipe", "three_layer"])
        stored = {"train_args": cli._settings(first, stored_config={})}
        assert stored["train_args"].get("width") is None
        args = cli.build_parser().parse_args(["train", "--out", str(tmp_path), "--resume", "--width", "8"])
        with pytest.raises(ValueError, match=r"holds a run with --width 64, but --width 8 was given; drop --width"):
            cli._settings(args, stored_config=stored)
        args = cli.build_parser().parse_args(["train", "--out", str(tmp_path), "--resume", "--width", "64"])
        assert cli._settings(args, stored_config=stored)["width"] == 64


def test_another_augment_on_resume_is_named_as_the_flag_writes_it(tmp_path):
    """The refusal of --augment on a run without said "--augment False, but --augment True was
    given", which no command line writes."""
    first = cli.build_parser().parse_args(["train", "--no-augment"])
    stored = {"train_args": cli._settings(first, stored_config={})}
    for flag, other in (("--augment", "--no-augment"), ("--no-augment", "--augment")):
        stored["train_args"]["augment"] = other == "--augment"
        args = cli.build_parser().parse_args(["train", "--out", str(tmp_path), "--resume", flag])
        with pytest.raises(ValueError, match=rf"holds a run with {other}, but {flag} was given; drop {flag} to"):
            cli._settings(args, stored_config=stored)


def test_another_val_split_on_resume_is_named_as_the_flag_writes_it(tmp_path):
    """The refusal of another --val-split names both as they are typed (it printed the parsed
    tuples: "--val-split ('fraction', 0.1), but --val-split ('batch', 5) was given")."""
    first = cli.build_parser().parse_args(["train", "--val-split", "0.1"])
    stored = {"train_args": dict(cli._settings(first, stored_config={}), val_split=["fraction", 0.1])}
    args = cli.build_parser().parse_args(["train", "--out", str(tmp_path), "--resume", "--val-split", "batch5"])
    with pytest.raises(ValueError, match=r"with --val-split 0\.1, but --val-split batch5 was given"):
        cli._settings(args, stored_config=stored)


def test_resume_keeps_the_runs_recipe_settings_after_the_recipe_changed(tmp_path):
    """--resume continues a run as it was set up: a recipe value changed since (airbench94_muon's head,
    its whitening bias's lr) does not reach it, and a setting an older version did not record takes
    the default, the behavior that version had, not the recipe's value of today."""
    first = cli.build_parser().parse_args(["train", "--recipe", "airbench94_muon"])
    old = cli._settings(first, stored_config={})
    for key in ("model_kwargs", "whiten_bias_lr", "schedule_kwargs", "cutout", "precision"):
        del old[key]  # not in the train_args of checkpoints written before these settings existed
    old["head_lr"] = 0.5  # a value the recipe has changed since
    args = cli.build_parser().parse_args(["train", "--out", str(tmp_path), "--resume"])
    s = cli._settings(args, stored_config={"train_args": old})
    assert s["model_kwargs"] == {} and s["whiten_bias_lr"] == "schedule" and s["cutout"] == 0
    assert s["head_lr"] == 0.5 and s["precision"] == "fp32"
    assert cli._settings(args, stored_config={"train_args": cli._settings(first, stored_config={})}) == \
        cli._settings(first, stored_config={})  # a run of this version goes on exactly as it started


def test_resume_keeps_the_runs_autotune_setting(tmp_path, capsys):
    """A run trained with --autotune off (the default rule's variants) and resumed without the flag
    autotuned from the resume on: other variants, other summation orders, no word. The setting is
    recorded and taken back; a flag given on the resume wins, with a note; a run of an older version
    (none recorded) resumes with the default."""
    first = cli.build_parser().parse_args(["train", "--model", "seed", "--autotune", "off"])
    stored = {"train_args": cli._settings(first, stored_config={})}
    assert stored["train_args"]["autotune"] == "off"
    resume = ["train", "--out", str(tmp_path), "--resume"]
    assert cli._settings(cli.build_parser().parse_args(resume), stored_config=stored)["autotune"] == "off"
    capsys.readouterr()
    args = cli.build_parser().parse_args(resume + ["--autotune", "on"])
    assert cli._settings(args, stored_config=stored)["autotune"] == "on"
    assert "was trained with --autotune off; continuing with --autotune on" in capsys.readouterr().err
    del stored["train_args"]["autotune"]
    assert cli._settings(cli.build_parser().parse_args(resume), stored_config=stored)["autotune"] == "auto"
    assert cli._settings(cli.build_parser().parse_args(["train", "--model", "seed"]))["autotune"] == "auto"


def test_resume_keeps_the_runs_device(tmp_path, capsys, monkeypatch):
    """A run on --device cpu resumed by its printed command (no --device) went on on $GPUCONV_DEVICE's
    device, or auto's (a GPU), whose sums differ: the device asked for is recorded and taken back
    ('auto' stays 'auto'); a --device given on the resume wins, with a note."""
    out = tmp_path / "run"
    rc, _, err = run(["train", "--model", "seed", "--epochs", "1", "--limit", "20", "--batch-size", "10", "--val-split",
                      "none", "--device", "cpu", "--data", SUBSET, "--out", out, "--no-progress"], capsys)
    assert rc == 0, err
    assert ckpt.read_config(ckpt.load_checkpoint(out))["train_args"]["device"] == "cpu"
    monkeypatch.setenv("GPUCONV_DEVICE", "sim")  # the default of --device now
    rc, _, err = run(["train", "--out", out, "--resume", "--no-progress"], capsys)
    assert rc == 0 and " on cpu (" in err and "note: the run" not in err, err
    rc, _, err = run(["train", "--out", out, "--resume", "--no-progress", "--device", "sim"], capsys)
    assert rc == 0 and " on sim (" in err and "trained with --device cpu; continuing on --device sim" in err, err


def test_resume_continues_on_the_runs_own_data_or_refuses(trained, tmp_path, capsys, monkeypatch):
    """The run records its training data (path, count, fingerprint): --resume without --data goes back
    to it, whatever $GPUCONV_DATA says, and other images are refused, not trained on."""
    import shutil
    config = ckpt.read_config(ckpt.load_checkpoint(trained / "checkpoint.npz"))
    assert config["data"]["path"] == str(SUBSET.resolve()) and config["data"]["train_images"] == 1000
    other = tmp_path / "other"
    shutil.copytree(SUBSET, other)
    import pickle
    with open(SUBSET / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"data"], batch[b"labels"] = batch[b"data"][::-1].copy(), batch[b"labels"][::-1]  # the same images, reordered
    with open(other / "data_batch_1", "wb") as f:
        pickle.dump(batch, f)
    run_dir = tmp_path / "again"
    shutil.copytree(trained, run_dir)
    monkeypatch.setenv("GPUCONV_DATA", str(other))
    rc, _, err = run(["train", "--out", run_dir, "--resume"], capsys)
    assert rc == 0, err
    assert f"resuming on the run's data: {SUBSET.resolve()}" in err and "nothing to do" in err
    rc, _, err = run(["train", "--out", run_dir, "--resume", "--data", other], capsys)
    assert rc == 1 and "trained on 1000 images from" in err and f"pass --data {SUBSET.resolve()}" in err


def test_the_data_a_resume_is_told_to_pass_is_quoted_as_a_shell_reads_it(tmp_path, capsys):
    """A run trained on data in a directory with a space in its name, resumed on other images: the
    refusal said "pass --data /…/cifar data (or a copy of it)", which a shell splits in two. The
    path is quoted as in the "Resume with:" line."""
    import pickle
    import shlex
    import shutil
    data, other = tmp_path / "cifar data", tmp_path / "other"
    shutil.copytree(SUBSET, data)
    shutil.copytree(SUBSET, other)
    with open(SUBSET / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"data"], batch[b"labels"] = batch[b"data"][::-1].copy(), batch[b"labels"][::-1]  # reordered
    with open(other / "data_batch_1", "wb") as f:
        pickle.dump(batch, f)
    argv = ["train", "--model", "seed", "--epochs", "1", "--limit", "128", "--batch-size", "64", "--out",
            tmp_path / "run", "--no-progress", "--device", "cpu"]
    assert run([*argv, "--data", data], capsys)[0] == 0
    rc, _, err = run(["train", "--out", tmp_path / "run", "--resume", "--data", other], capsys)
    assert rc == 1 and f"pass --data {shlex.quote(str(data.resolve()))} (or a copy of it)" in err, err


def test_autotune_on_off_a_gpu_says_it_does_nothing(tmp_path, capsys):
    """--autotune on times kernel variants on a GPU only: on the simulator or the NumPy path it changed
    nothing, without a word; a note now says so (and nothing where it tunes, or was not asked for)."""
    from gpuconv import backend
    rc, _, err = run(["train", "--model", "seed", "--epochs", "1", "--limit", "40", "--val-split", "none",
                      "--autotune", "on", "--device", "cpu", "--data", SUBSET, "--out", tmp_path, "--no-progress"],
                     capsys)
    assert rc == 0, err
    assert "--autotune on times the convolutions' kernel variants on a GPU; on cpu it does nothing: the NumPy" in err
    cli._note_autotune_off_gpu("on", backend.Device("sim"))
    assert "on sim it does nothing: the simulator's timings say nothing about a GPU's" in capsys.readouterr().err
    for setting in ("auto", "off"):
        cli._note_autotune_off_gpu(setting, backend.Device("sim"))
    assert capsys.readouterr().err == ""


def test_flags_that_do_nothing_warn(tmp_path, capsys):
    rc, _, err = run(["train", "--model", "seed", "--width", "8", "--epochs", "1", "--limit", "40",
                      "--batch-size", "64", "--cutout", "4", "--data", SUBSET, "--out", tmp_path, "--no-progress"],
                     capsys)
    assert rc == 0, err
    assert "--cutout 4 applies with augmentation only, which this run has off" in err
    assert "--width sets fast_net's, the ResNets' and the airbench networks' channel widths; the seed model ignores it" in err
    assert "--batch-size 64 is larger than the 40 training images" in err
    rc, _, err = run(["train", "--model", "seed", "--epochs", "1", "--limit", "40", "--cuda-graph", "--device", "cpu",
                      "--data", SUBSET, "--out", tmp_path / "g", "--no-progress"], capsys)
    assert rc == 0 and "--cuda-graph replays steps on a GPU; on cpu each step runs as it is" in err


def test_cuda_graph_trains_a_model_with_dropout_as_the_eager_run(tmp_path, capsys, monkeypatch):
    """--cuda-graph takes a model with dropout (its mask keys written before each step from the
    layer's generator): the run trains as one without it, bit for bit."""
    from gpuconv import models
    from gpuconv.layers import Dropout, Sequential
    seed_net = models.seed_net

    def seed_net_with_dropout(**kwargs):  # (no recipe has dropout: the seed model with one before its classifier)
        layers = list(seed_net(**kwargs))
        return Sequential(*layers[:-1], Dropout(0.5, seed=7), layers[-1])
    monkeypatch.setattr(models, "seed_net", seed_net_with_dropout)
    argv = ["train", "--model", "seed", "--epochs", "2", "--limit", "40", "--batch-size", "10", "--device", "cpu",
            "--data", SUBSET, "--no-progress"]
    weights = {}
    for graphed in (False, True):
        out = tmp_path / ("graphed" if graphed else "eager")
        rc, _, err = run(argv + ["--out", out] + (["--cuda-graph"] if graphed else []), capsys)
        assert rc == 0, err
        arrays = ckpt.load_checkpoint(out / "checkpoint.npz")
        assert "rng/model.4._rngs.numpy" in arrays  # the dropout layer's generator
        weights[graphed] = {k: v for k, v in arrays.items() if k.startswith("model/")}
    assert weights[True].keys() == weights[False].keys() and weights[True]
    for k in weights[False]:
        np.testing.assert_array_equal(weights[True][k], weights[False][k], err_msg=k)


def test_the_small_subset_note_suggests_a_smaller_batch(tmp_path, capsys, monkeypatch):
    argv = ["train", "--model", "fast", "--width", "2", "--epochs", "1", "--limit", "300", "--data", SUBSET,
            "--out", tmp_path, "--no-progress", "--val-split", "0.1"]
    rc, _, err = run(argv + ["--batch-size", "128"], capsys)
    assert rc == 0 and "--batch-size 32 suits a subset this small better" in err  # 300 images: 32 gives 10 steps
    rc, _, err = run(argv + ["--batch-size", "32", "--out", tmp_path / "b"], capsys)
    assert rc == 0 and "suits a subset" not in err  # already the suggestion: no note that repeats it


def test_fast_net_with_label_smoothing_and_augmentation(tmp_path, capsys):
    rc, out, err = run(["train", "--model", "fast", "--width", "4", "--epochs", "1", "--limit", "64",
                        "--batch-size", "32", "--data", SUBSET, "--out", tmp_path, "--no-progress",
                        "--val-split", "0.05"], capsys)
    assert rc == 0, err
    config = ckpt.read_config(ckpt.load_checkpoint(tmp_path))
    assert config["kwargs"] == {"seed": 0, "width": 4}
    assert config["train_args"]["label_smoothing"] == 0.2 and config["train_args"]["augment"] is True
    assert "a seeded 0.05 of the training images" in err


# kuangliu/pytorch-cifar's networks, scaled down where they can be: (--width, --limit and --batch-size,
# the constructor's kwargs the checkpoint records, the --model default's width)
_KUANGLIU_RUNS = {"resnet18": (["--width", "4"], ["--limit", "64", "--batch-size", "32"], {"seed": 0, "width": 4}, 64),
                  "mobilenetv2": (["--width", "4"], ["--limit", "16", "--batch-size", "16"], {"seed": 0}, None),
                  "senet18": (["--width", "4"], ["--limit", "16", "--batch-size", "16"], {"seed": 0}, None),
                  **{name: (["--width", "4"], ["--limit", "16", "--batch-size", "16"], {"seed": 0}, None)
                     for name in ("shufflenetv2", "efficientnetb0", "simpledla", "mobilenet", "resnext29",
                                  "googlenet", "densenet121")},
                  **{name: (["--width", "4"], ["--limit", "16", "--batch-size", "16"], {"seed": 0, "width": 4}, 64)
                     for name in ("resnet34", "resnet50", "preact_resnet18", "preact_resnet50")},
                  "shufflenetg2": (["--width", "4"], ["--limit", "16", "--batch-size", "16"], {"seed": 0, "groups": 2},
                                   None),
                  "lenet": (["--width", "4"], ["--limit", "16", "--batch-size", "16"], {"seed": 0}, None),
                  "pnasneta": (["--width", "4"], ["--limit", "16", "--batch-size", "16"], {"seed": 0, "cell_type": "A"},
                               None),
                  "regnetx_200mf": (["--width", "4"], ["--limit", "16", "--batch-size", "16"],
                                    {"seed": 0, "regnet_name": "RegNetX_200MF"}, None),
                  # (the DPNs on 4 images: 6 s for dpn26's step, 12 s for dpn92's 34.2M parameters)
                  **{name: (["--width", "4"], ["--limit", "4", "--batch-size", "4"], {"seed": 0}, None)
                     for name in ("dpn26", "dpn92")},
                  "vgg19": (["--width", "4"], ["--limit", "16", "--batch-size", "16"], {"seed": 0, "vgg_name": "VGG19"},
                            None)}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)  # (11-15 s on 2 cores)
                                  if n in ("resnext29", "googlenet", "densenet121", "dpn92") else n
                                  for n in sorted(_KUANGLIU_RUNS)])
def test_kuangliu_model_and_recipe_train_and_the_checkpoint_loads(name, tmp_path, capsys):
    """gpuconv train --recipe NAME end to end, scaled down (resnet18: width 4, 64 images, 2 steps;
    the other ResNets width 4, one step of 16 images; the others have no width to scale down: --width
    warns that it is ignored, one step of 16 images (the DPNs 4), 2-10 s each on a 2-core CPU): the
    recipe's network, SGD without Nesterov and cosine schedule
    without warmup are what the run records; the loss is finite; load_model rebuilds the network
    from the checkpoint (models.from_config) and predicts; --model NAME takes the recipe of its name."""
    import gpuconv
    from gpuconv import models
    width, sizes, kwargs, default_width = _KUANGLIU_RUNS[name]
    rc, _, err = run(["train", "--recipe", name, *width, "--epochs", "1", *sizes, "--val-split", "none",
                      "--device", "cpu", "--data", SUBSET, "--out", tmp_path, "--no-progress"], capsys)
    assert rc == 0, err
    assert f"training {name} (recipe {name})" in err and "cosine" in err
    assert (f"the {name} model ignores it" in err) == ("width" not in kwargs)
    config = ckpt.read_config(ckpt.load_checkpoint(tmp_path))
    constructor = cli.MODELS[name][0]  # (vgg19's is vgg, with vgg_name='VGG19')
    assert config["model"] == name and config["constructor"] == constructor
    assert config["kwargs"] == kwargs
    args = config["train_args"]
    assert (args["lr"], args["momentum"], args["nesterov"], args["weight_decay"]) == (0.1, 0.9, False, 5e-4)
    assert args["schedule_kwargs"] == {"warmup_fraction": 0.0} and args["augment"] is True
    losses = [json.loads(x)["train_loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["kind"] == "epoch"]
    assert len(losses) == 1 and np.isfinite(losses[0]), losses
    model = gpuconv.load_model(tmp_path / "checkpoint.npz")
    built = getattr(models, constructor)(**{k: v for k, v in kwargs.items() if k != "seed"})
    assert model.net.num_parameters() == built.num_parameters()
    probs = model.predict(np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8))
    assert probs.shape == (3, 10) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    s = cli._settings(cli.build_parser().parse_args(["train", "--model", name]))
    assert (s["recipe"], s["epochs"], s["batch_size"], s.get("width")) == (name, 200, 128, default_width)


@pytest.mark.parametrize("name", ["resnet101", "resnet152", "preact_resnet34", "preact_resnet101",
                                  "preact_resnet152", "shufflenetg3", "dla", "pnasnetb", "densenet169", "densenet201",
                                  "densenet161"])
def test_the_other_kuangliu_models_have_his_recipe(name):
    """The networks the run above leaves out (its code at more blocks, or another group count):
    --model NAME takes kuangliu's recipe (at width 64 for a ResNet, whose --width narrows the network
    it builds), and the config rebuilds the network."""
    from gpuconv import models
    s = cli._settings(cli.build_parser().parse_args(["train", "--model", name]))
    resnet = "resnet" in name
    assert (s["recipe"], s["epochs"], s["batch_size"], s["lr"], s.get("width")) == \
        (name, 200, 128, 0.1, 64 if resnet else None)
    assert (s["optimizer"], s["nesterov"], s["schedule"]) == ("sgd", False, "cosine")
    assert get_recipe(name)["precision"] == "auto"  # (bf16 on a GPU; the settings resolve it on this machine)
    net, config = cli.build_model(name, seed=2, width=2)
    constructor, extra = cli.MODELS[name]
    kwargs = {**extra, "seed": 2, **({"width": 2} if resnet else {})}
    assert config == {"model": name, "constructor": constructor, "kwargs": kwargs}
    assert net.num_parameters() == getattr(models, constructor)(**{k: v for k, v in kwargs.items()
                                                                  if k != "seed"}).num_parameters()
    assert models.from_config(config).state_dict().keys() == net.state_dict().keys()


def test_summary_of_the_resnet18_model(capsys):
    from gpuconv import models
    rc, out, _ = run(["summary", "--model", "resnet18"], capsys)
    assert rc == 0 and f"{models.resnet18().num_parameters():,}" in out.splitlines()[-2]  # the total line
    assert "layer4.1.relu" in out and "Residual (shortcut + inner)" in out
    table = out.splitlines()[:-1]  # (the last line, a note)
    assert {len(line) for line in table} == {len(table[0])}, "the columns do not line up"
    rc, out, err = run(["summary", "--recipe", "resnet18", "--width", "4"], capsys)
    assert rc == 0 and f"{models.resnet18(width=4).num_parameters():,}" in out and "ignores it" not in err


@pytest.mark.parametrize("name", ["mobilenetv2", "senet18"])
def test_kuangliu_models_on_a_small_subset_get_the_batch_size_note(name, tmp_path, capsys, monkeypatch):
    """The note that a recipe's batch leaves too few steps on a small subset, as resnet18's: batch
    128 on 64 images. (Checked before the model is built: the training itself is stubbed out.)"""
    def stop(*args, **kwargs):
        raise ValueError("stopped before building the model")
    monkeypatch.setattr(cli, "build_model", stop)
    rc, _, err = run(["train", "--model", name, "--epochs", "1", "--limit", "64", "--val-split", "none",
                      "--device", "cpu", "--data", SUBSET, "--out", tmp_path, "--no-progress"], capsys)
    assert rc == 1 and "stopped before building the model" in err
    assert "note: batch size 128 gives only" in err and "--batch-size 16 suits a subset this small better" in err


def test_summary_of_the_mobilenetv2_model(capsys):
    from gpuconv import models
    rc, out, err = run(["summary", "--model", "mobilenetv2"], capsys)
    assert rc == 0 and f"{models.mobilenetv2().num_parameters():,}" in out.splitlines()[-2]  # the total line
    assert "layers.16.shortcut" in out and "Residual (shortcut + inner)" in out and "Residual (x + inner)" in out
    depthwise = next(line for line in out.splitlines() if line.startswith("layers.3.conv2 "))
    assert "144x16x16" in depthwise and "1,296" in depthwise and f"{144 * 9 * 16 * 16 * 2:,}" in depthwise
    table = out.splitlines()[:-1]  # (the last line, a note)
    assert {len(line) for line in table} == {len(table[0])}, "the columns do not line up"
    rc, out, err = run(["summary", "--recipe", "mobilenetv2", "--width", "4"], capsys)
    assert rc == 0 and f"{2_296_922:,}" in out and "the mobilenetv2 model ignores it" in err

def test_summary_of_the_senet18_model(capsys):
    """Each block's squeeze-excitation gate a row of its own (its pooling, 1x1 convolutions and
    activations under it), inside the residual branch; the total is the model's."""
    from gpuconv import models
    rc, out, err = run(["summary", "--model", "senet18"], capsys)
    assert rc == 0 and f"{models.senet18().num_parameters():,}" in out.splitlines()[-2]  # the total line
    gates = [line for line in out.splitlines() if line.split()[1:2] and line.split()[1] == "SqueezeExcitation"]
    assert len(gates) == 8 and gates[-1].startswith("layer4.1.res.inner.se ") and "512x4x4" in gates[-1]
    fc1 = next(line for line in out.splitlines() if line.startswith("layer4.1.res.inner.se.fc1 "))
    assert "32x1x1" in fc1 and f"{512 * 32 + 32:,}" in fc1
    table = out.splitlines()[:-1]  # (the last line, a note)
    assert {len(line) for line in table} == {len(table[0])}, "the columns do not line up"
    rc, out, err = run(["summary", "--recipe", "senet18", "--width", "4"], capsys)
    assert rc == 0 and f"{11_263_042:,}" in out and "the senet18 model ignores it" in err


def test_default_settings_are_a_sensible_main_job():
    args = cli.build_parser().parse_args(["train"])
    s = cli._settings(args)
    assert s["model"] == "three_layer" and s["epochs"] >= 5 and s["schedule"] == "onecycle"
    assert args.device == "auto" and s["momentum"] == 0.9
    fast = cli._settings(cli.build_parser().parse_args(["train", "--model", "fast", "--lr", "0.1"]))
    assert fast["lr"] == 0.1 and fast["label_smoothing"] > 0 and fast["augment"] and fast["batch_size"] == 512


def test_a_val_split_typo_is_a_bad_command_line_before_any_data_loads(tmp_path, capsys):
    """--val-split 1 (or half) was parsed only after the data set loaded: with no data at hand,
    the 163 MB download came first, and the typo then failed as an error (1), not as a bad
    command line (2)."""
    for typo in ("1", "half", "batch"):
        with pytest.raises(SystemExit) as exc:
            cli.main(["train", "--val-split", typo, "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"argument --val-split: {typo!r} is not understood" in err, err
        assert "no-data" not in err and not (tmp_path / "o").exists()
    assert cli.build_parser().parse_args(["train", "--val-split", "batch2"]).val_split == "batch2"  # as written


def test_a_cutout_larger_than_the_images_is_a_bad_command_line(tmp_path, capsys):
    """--cutout 100 failed as an error (1) in the loader, after the data set loaded and the network
    was built; it fails as the command line is read (2), naming the images' size."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--augment", "--cutout", "100", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "'100' is not a cutout side: 0 to 32 pixels (the images are 32x32)" in err, err
    assert cli.build_parser().parse_args(["train", "--cutout", "32"]).cutout == 32


def test_bad_values_get_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="--val-split"):
        cli.parse_val_split("half")
    assert cli.parse_val_split("batch3") == ("batch", 3) and cli.parse_val_split("0.2") == ("fraction", 0.2)
    with pytest.raises(SystemExit):
        cli.main(["train", "--device", "tpu", "--data", str(SUBSET), "--out", str(tmp_path)])
    assert "device 'tpu' is not understood" in capsys.readouterr().err
    for argv, says in ((["train", "--model", "ResNet-18"], "--model: invalid choice: 'ResNet-18'; did you mean 'resnet18'?"),
                       (["trian"], "invalid choice: 'trian'; did you mean 'train'?")):
        with pytest.raises(SystemExit):  # a misspelt name: the one it was probably meant as, then all of them
            cli.main(argv)
        assert says in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the README's [--resume|--resume-if-exists]: both silently started anew
        cli.main(["train", "--resume", "--resume-if-exists", "--data", str(SUBSET), "--out", str(tmp_path)])
    assert "--resume-if-exists: not allowed with argument --resume" in capsys.readouterr().err
    from gpuconv import backend
    if not backend.cuda_available():
        rc, _, err = run(["train", "--device", "cuda", "--data", SUBSET, "--out", tmp_path], capsys)
        # (in the command line's words: --device cpu, not the API's device='cpu')
        assert rc == 1 and "--device cuda asks for a GPU, but" in err and "Use --device cpu (NumPy), --device sim" in err
        rc, _, err = run(["predict", "--device", "cuda:1", "--checkpoint", tmp_path / "nope.npz", "x.png"], capsys)
        assert rc == 1 and "--device cuda:1 asks for a GPU, but" in err and "Use --device cpu" in err
        if backend.cupy_module() is None:  # installed without a CUDA extra: that is the reason given
            assert "cupy is not importable" in err
        elif not backend._driver_installed():
            assert "no NVIDIA GPU driver found" in err
    rc, _, err = run(["train", "--val-split", "test", "--data", SUBSET, "--out", tmp_path, "--limit", "10"], capsys)
    assert rc == 1 and "no test_batch" in err
    fresh = tmp_path / "fresh"
    rc, _, err = run(["train", "--val-split", "batch9", "--data", SUBSET, "--out", fresh], capsys)
    assert rc == 1 and "--val-split batch9:" in err and "use batch1..batch5" in err and "val_batch" not in err
    assert not fresh.exists()  # a run that failed before writing anything leaves no empty --out
    rc, _, err = run(["evaluate", "--checkpoint", tmp_path / "nope.npz", "--data", SUBSET], capsys)
    assert rc == 1 and "does not exist" in err
    bare = ckpt.save_checkpoint(tmp_path / "bare.npz", {"meta/format": np.asarray(1), "meta/epoch": np.asarray(0)})
    rc, _, err = run(["evaluate", "--checkpoint", bare, "--data", SUBSET], capsys)
    assert rc == 1 and "no model config" in err
    with pytest.raises(SystemExit):
        cli.main(["train", "--epochs", "0"])


@pytest.mark.parametrize("flag, value, says", [
    ("--lr", "-1", "must be a finite number >= 0"), ("--lr", "0", "a learning rate of 0 trains nothing"),
    ("--momentum", "-1", "in [0, 1)"), ("--weight-decay", "nan", "must be a finite number >= 0"),
    ("--label-smoothing", "2", "in [0, 1)"), ("--epochs", "1.5", "'1.5' is not a positive integer"),
    ("--batch-size", "0", "is not a positive integer"), ("--seed", "-1", "argument --seed: '-1' is not a seed: an integer in [0, 2**64)"),
    ("--seed", str(2**64), f"argument --seed: '{2**64}' is not a seed: an integer in [0, 2**64)")])
def test_bad_numbers_are_refused_before_any_data_is_read(capsys, monkeypatch, flag, value, says):
    monkeypatch.setattr(cli, "_load_data", lambda *a, **k: pytest.fail("data loaded before the flags were checked"))
    with pytest.raises(SystemExit) as info:
        cli.main(["train", flag, value])
    assert info.value.code == 2 and says in capsys.readouterr().err


def test_gpuconv_device_is_the_cli_default_and_must_be_valid(monkeypatch, capsys):
    monkeypatch.setenv("GPUCONV_DEVICE", "sim")
    assert cli.build_parser().parse_args(["train"]).device == "sim"
    assert cli.build_parser().parse_args(["evaluate", "--checkpoint", "c"]).device == "sim"
    assert cli.build_parser().parse_args(["train", "--device", "cpu"]).device == "cpu"  # a flag wins
    monkeypatch.setenv("GPUCONV_DEVICE", "gpu")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train"])
    assert "device 'gpu' is not understood" in capsys.readouterr().err


def test_resume_needs_a_checkpoint_unless_if_exists(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load_data", lambda *a, **k: pytest.fail("data loaded before the flags were checked"))
    rc, _, err = run(["train", "--out", tmp_path / "empty", "--resume"], capsys)
    assert rc == 1 and "checkpoint.npz does not exist, so there is no run to continue" in err
    assert "--resume-if-exists" in err
    (tmp_path / "file").write_text("")
    rc, _, err = run(["train", "--out", tmp_path / "file"], capsys)
    assert rc == 1 and "is a file, not a directory" in err


def test_resume_if_exists_starts_then_continues(tmp_path, capsys):
    argv = ["train", "--model", "seed", "--epochs", "1", "--limit", "200", "--data", SUBSET, "--out", tmp_path,
            "--no-progress", "--resume-if-exists"]
    rc, _, err = run(argv, capsys)
    assert rc == 0 and "resuming" not in err
    rc, _, err = run(argv, capsys)
    assert rc == 0 and "nothing to do: 1 epoch(s) already done" in err


def test_a_second_run_into_the_same_out_is_refused_while_the_first_runs(tmp_path, capsys):
    """The kernel's lock on the run directory: refused while another process holds it (whatever
    pid the file says), free once that process dies, even by SIGKILL (nothing stale is left)."""
    import socket

    from conftest import lock_held_elsewhere
    from gpuconv import _files
    with lock_held_elsewhere(tmp_path) as holder:
        rc, _, err = run(["train", "--out", tmp_path, "--data", SUBSET], capsys)
        assert rc == 1 and (f"another gpuconv train (pid {holder.pid} on {socket.gethostname()}) is writing to "
                            f"{tmp_path}") in err
        (tmp_path / _files.LOCK_NAME).write_text(f"{os.getpid()}\n")  # the file's words do not make the lock
        rc, _, err = run(["train", "--out", tmp_path, "--data", SUBSET], capsys)
        assert rc == 1 and "is writing to" in err
    assert (tmp_path / _files.LOCK_NAME).exists()  # a SIGKILLed holder's file: no lock on it any more
    rc, _, err = run(["train", "--model", "seed", "--epochs", "1", "--limit", "100", "--data", SUBSET,
                      "--out", tmp_path, "--no-progress"], capsys)
    assert rc == 0, err
    assert not (tmp_path / _files.LOCK_NAME).exists()


def test_a_finishing_run_removes_only_its_own_lock_file(tmp_path):
    """Someone removed the lock file of a running run A and a run B made and locked a new one: A,
    finishing, leaves B's file (and lock) alone, so a third run is still refused."""
    from gpuconv import _files
    a = _files.directory_lock(tmp_path)
    a.__enter__()
    (tmp_path / _files.LOCK_NAME).unlink()
    with _files.directory_lock(tmp_path):  # B
        a.__exit__(None, None, None)
        assert (tmp_path / _files.LOCK_NAME).exists()
        with pytest.raises(_files.DirectoryLocked, match="is writing to"):
            with _files.directory_lock(tmp_path):
                pass
    assert not (tmp_path / _files.LOCK_NAME).exists()


def test_the_run_directory_lock_works_without_fcntl(tmp_path, monkeypatch):
    """Windows has no fcntl: the lock is msvcrt's there (mandatory, so on a byte past the holder's
    name, which a refused run reads for its message)."""
    import errno
    import types

    from gpuconv import _files
    held = {}  # (file, byte) -> the descriptor holding it, as the OS keeps it per open file

    def locking(fd, mode, nbytes):
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, os.lseek(fd, 0, os.SEEK_CUR))
        if mode == msvcrt.LK_NBLCK:
            if held.get(key, fd) != fd:
                raise PermissionError(errno.EACCES, "Permission denied")
            held[key] = fd
        else:
            held.pop(key, None)

    msvcrt = types.SimpleNamespace(LK_NBLCK=2, LK_UNLCK=0, locking=locking)
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", msvcrt)
    with _files.directory_lock(tmp_path) as path:
        assert path.read_text().split()[0] == str(os.getpid())
        with pytest.raises(_files.DirectoryLocked, match=f"another gpuconv train \\(pid {os.getpid()} on "):
            with _files.directory_lock(tmp_path):
                pass
    assert held and not (tmp_path / _files.LOCK_NAME).exists()


def test_a_run_writes_through_no_planted_link_and_only_into_its_own_directory(tmp_path, capsys, monkeypatch):
    """Links planted as the lock or the metrics file (by another user of a shared directory) are
    not written through; an --out that every user can write to is refused, and one the run makes
    never is."""
    from gpuconv import _files
    secret = tmp_path / "secret"
    secret.write_text("mine\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / _files.LOCK_NAME).symlink_to(secret)
    rc, _, err = run(["train", "--out", out, "--data", SUBSET], capsys)
    assert rc == 1 and "is a symbolic link, which gpuconv does not write through" in err
    assert secret.read_text() == "mine\n"
    (out / _files.LOCK_NAME).unlink()
    (out / "metrics.jsonl").symlink_to(secret)  # before the run: set aside with the other old files
    rc, _, err = run(["train", "--model", "seed", "--epochs", "1", "--limit", "100", "--data", SUBSET,
                      "--out", out, "--no-progress"], capsys)
    assert rc == 0 and secret.read_text() == "mine\n" and not (out / "metrics.jsonl").is_symlink()
    from gpuconv.models import seed_net
    from gpuconv.optim import SGD
    from gpuconv.trainer import Trainer
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to(secret)  # during a run
    model = seed_net()
    with pytest.raises(OSError, match="metrics.jsonl.*is a symbolic link, which gpuconv does not write through"):
        Trainer(model, SGD(model.parameters(), lr=0.1), out_dir=out, progress=False)._write_metrics({"kind": "epoch"})
    assert secret.read_text() == "mine\n"
    (out / "metrics.jsonl").unlink()
    out.chmod(0o777)
    rc, _, err = run(["train", "--out", out, "--data", SUBSET], capsys)
    assert rc == 1 and "is writable by every user" in err and "chmod o-w" in err
    out.chmod(0o755)
    old = os.umask(0)  # a directory the run makes is never writable by every user, whatever the umask
    try:
        rc, _, err = run(["train", "--model", "seed", "--epochs", "1", "--limit", "100", "--data", SUBSET,
                          "--out", tmp_path / "new" / "run", "--no-progress"], capsys)
    finally:
        os.umask(old)
    assert rc == 0, err
    assert not (tmp_path / "new").stat().st_mode & 0o002 and not (tmp_path / "new" / "run").stat().st_mode & 0o002


def test_the_console_gives_up_only_on_the_stream_that_failed(monkeypatch):
    """A write to a closed stderr is dropped and that stream given up on; a stream put in its place
    afterwards (a notebook's, a test's) gets the progress again."""
    import io
    from gpuconv._console import CONSOLE
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    print("lost", file=CONSOLE, flush=True)
    assert CONSOLE.broken
    fresh = io.StringIO()
    monkeypatch.setattr(sys, "stderr", fresh)
    assert not CONSOLE.broken
    print("seen", file=CONSOLE, flush=True)
    assert fresh.getvalue() == "seen\n"


def test_the_console_takes_a_missing_stderr(monkeypatch):
    """Started with stderr closed (2>&-) or under pythonw, sys.stderr is None: progress is dropped."""
    from gpuconv._console import CONSOLE
    monkeypatch.setattr(sys, "stderr", None)
    print("a progress line", file=CONSOLE, flush=True)
    assert not CONSOLE.isatty()


def test_a_run_whose_log_reader_left_keeps_training_and_saving(tmp_path):
    """``gpuconv train ... 2>&1 | tee log`` after the ssh session dropped: stderr's pipe has no
    reader. The run goes on silently and writes its checkpoints (a BrokenPipeError used to end it
    at the next progress line, with none); ``gpuconv info | head -1`` ends quietly."""
    cmd = [sys.executable, "-m", "gpuconv", "train", "--model", "seed", "--epochs", "2", "--limit", "200",
           "--batch-size", "50", "--log-every", "1", "--data", str(SUBSET), "--out", str(tmp_path), "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    proc.stderr.close()  # the reader is gone before the first line
    assert proc.wait(timeout=300) == 0
    from gpuconv import checkpoint as ckpt
    assert int(ckpt.load_checkpoint(tmp_path / "checkpoint.npz")["meta/epoch"]) == 2
    info = subprocess.Popen([sys.executable, "-m", "gpuconv", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    info.stdout.close()
    err = info.stderr.read().decode()
    assert info.wait(timeout=120) == 141 and "Broken pipe" not in err and "Traceback" not in err


def test_a_fresh_run_sets_the_previous_runs_files_aside_together(tmp_path, capsys):
    """A new run (no --resume) into an --out that holds another run's files: all four move into
    previous-<time>/ at its start, so neither its best.npz nor its curves pass for the new run's,
    and its checkpoint survives a forgotten --resume; a third run keeps both older ones."""
    from gpuconv import checkpoint as ckpt
    base = ["train", "--epochs", "1", "--limit", "200", "--data", SUBSET, "--out", tmp_path, "--no-progress"]
    assert run(base + ["--model", "seed"], capsys)[0] == 0
    first = ckpt.load_checkpoint(tmp_path / "checkpoint.npz")
    rc, _, err = run(base + ["--model", "three_layer"], capsys)
    (prev,) = tmp_path.glob("previous-*")
    assert rc == 0 and f"moved to {prev}" in err and "pass --resume" in err
    names = {"checkpoint.npz", "best.npz", "metrics.jsonl", "curves.png"}
    assert {p.name for p in prev.iterdir()} == names
    kept = ckpt.load_checkpoint(prev / "checkpoint.npz")
    model = lambda path: ckpt.read_config(ckpt.load_checkpoint(path))["model"]  # noqa: E731
    assert model(prev / "checkpoint.npz") == "seed" and kept.keys() == first.keys()
    assert model(tmp_path / "checkpoint.npz") == model(tmp_path / "best.npz") == "three_layer"
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == len(
        (prev / "metrics.jsonl").read_text().splitlines())  # one run's lines each
    assert run(base + ["--model", "seed"], capsys)[0] == 0
    assert sorted(model(p / "best.npz") for p in tmp_path.glob("previous-*")) == ["seed", "three_layer"]


def test_bad_environment_values_are_named_in_one_line(tmp_path):
    """A bad GPUCONV_DEVICE names the variable (not only --device); a bad GPUCONV_KERNEL_VARIANTS
    leaves `gpuconv info` working and fails a run with one line naming it, not an import traceback."""
    env = dict(os.environ, PYTHONPATH=str(REPO), GPUCONV_DEVICE="gpu")
    out = subprocess.run([sys.executable, "-m", "gpuconv", "train"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "from $GPUCONV_DEVICE" in out.stderr
    env = dict(os.environ, PYTHONPATH=str(REPO), GPUCONV_KERNEL_VARIANTS="bogus")
    info = subprocess.run([sys.executable, "-m", "gpuconv", "info"], env=env, capture_output=True, text=True)
    assert info.returncode == 0 and "gpuconv 0.1.0" in info.stdout
    out = subprocess.run([sys.executable, "-m", "gpuconv", "train", "--device", "sim", "--model", "seed", "--epochs",
                          "1", "--limit", "50", "--data", str(SUBSET), "--out", str(tmp_path), "--no-progress"],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "GPUCONV_KERNEL_VARIANTS item 'bogus' must read" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("name, value", [("GPUCONV_KERNEL_VARIANTS", "conv2d_forward=v4"), ("GPUCONV_AUTOTUNE", "maybe")])
def test_a_bad_kernel_setting_fails_train_before_the_data_loads(tmp_path, capsys, monkeypatch, name, value):
    """Read at the first launch or step otherwise: after the data set's load (or download) and the
    kernels' compile. A --data that does not exist shows which came first."""
    from gpuconv import kernels
    monkeypatch.setenv(name, value)
    kernels._env_choices.cache_clear()
    try:
        rc, _, err = run(["train", "--device", "sim", "--data", tmp_path / "absent", "--out", tmp_path / "out",
                          "--no-progress"], capsys)
    finally:
        kernels._env_choices.cache_clear()
    assert rc == 1 and f"error: {name}" in err and "--data" not in err


def test_info_reports_versions_cuda_and_telemetry(capsys):
    rc, out, _ = run(["info"], capsys)
    assert rc == 0
    assert "gpuconv 0.1.0" in out and f"numpy {np.__version__}" in out and "python " in out
    assert "cupy" in out and "CUDA:" in out
    from gpuconv import backend
    if not backend.cuda_available():
        assert "not usable" in out and backend.cuda_status() in out
        assert "no NVIDIA GPU" in out
        assert "precision 'auto' (the speed recipes' default) means fp32 on cpu" in out
    assert "'auto' means" in out


def test_a_device_error_names_gpuconv_device_only_where_the_device_came_from_it(tmp_path, capsys, monkeypatch):
    """--device cuda given with $GPUCONV_DEVICE=cuda set was said to come from the variable."""
    from gpuconv import backend
    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    monkeypatch.setenv("GPUCONV_DEVICE", "cuda")
    for given, says in ((["--device", "cuda"], False), ([], True)):
        rc, _, err = run(["predict", *given, "--checkpoint", tmp_path / "nope.npz", "x.png"], capsys)
        assert rc == 1 and "asks for a GPU, but" in err and ("--device cuda (from $GPUCONV_DEVICE" in err) == says, err


def test_info_works_when_gpuconv_device_names_no_usable_device(capsys, monkeypatch):
    """`gpuconv info`, the command that says why CUDA is not usable, failed with that reason when
    $GPUCONV_DEVICE asked for a GPU (or named no device): it reports the variable instead."""
    import contextvars

    from gpuconv import backend
    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    for value, says in (("cuda", "GPUCONV_DEVICE=cuda makes cuda:0 the default device, but"),
                        ("tpu", "GPUCONV_DEVICE: device 'tpu' is not understood")):
        monkeypatch.setenv("GPUCONV_DEVICE", value)
        rc, out, err = contextvars.Context().run(run, ["info"], capsys)  # (the default device unset, as in a new process)
        assert rc == 0 and f"; no default: environment variable {says}" in out, (out, err)


def test_info_names_where_it_looked_for_the_data(capsys, monkeypatch, tmp_path):
    """With $GPUCONV_DATA set to a place without the data, info said "none found yet ...; set
    GPUCONV_DATA", as if it were not set; it names the place searched."""
    monkeypatch.setenv("GPUCONV_DATA", str(tmp_path / "nowhere"))
    rc, out, _ = run(["info"], capsys)
    assert rc == 0 and f"CIFAR-10 data: none found yet in $GPUCONV_DATA ({tmp_path / 'nowhere'})" in out, out
    monkeypatch.delenv("GPUCONV_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    rc, out, _ = run(["info"], capsys)
    assert rc == 0 and f"CIFAR-10 data: none found yet in {tmp_path / '.cache' / 'gpuconv'} (" in out, out
    monkeypatch.setenv("GPUCONV_DATA", str(SUBSET))
    assert f"CIFAR-10 data: {SUBSET}" in run(["info"], capsys)[1]


def test_info_lists_sim_only_with_its_compiler(capsys, monkeypatch):
    """Without the simulator's compiler, `gpuconv info` says why and leaves sim out of the devices."""
    assert "devices: cpu, sim" in run(["info"], capsys)[1]
    monkeypatch.setenv("GPUCONV_SIM_CXX", "no-such-compiler-here")
    rc, out, _ = run(["info"], capsys)
    assert rc == 0 and ("devices: cpu;" in out or "devices: cpu, cuda;" in out)
    assert "sim (CUDA kernels on the host simulator): not usable" in out and "'no-such-compiler-here'" in out


def test_precompile_reports_each_build_and_needs_a_gpu_or_an_arch(capsys, monkeypatch):
    from gpuconv import backend, kernels
    asked = []
    monkeypatch.setattr(kernels, "precompile", lambda device, arch=None, jobs=None: asked.append((device, arch, jobs)) or [
        {"file": "relu", "build": "float", "arch": "sm_80", "seconds": 0.25, "cached": False, "stored": True},
        {"file": "relu", "build": "double", "arch": "sm_80", "seconds": 0.0, "cached": True, "stored": True}])
    rc, out, err = run(["precompile", "--arch", "sm_80", "--jobs", "3"], capsys)
    assert rc == 0 and asked == [(None, "sm_80", 3)]
    # said before the compiles start, which print nothing for minutes on a first run
    assert "compiling the kernel builds for sm_80, 3 at a time" in err and "listed when all are done" in err
    assert "relu         float       sm_80    compiled in 0.2 s" in out and "in the cache" in out
    assert "2 builds, 1 compiled" in out
    monkeypatch.setattr(kernels, "precompile", lambda device, arch=None, jobs=None: [
        {"file": "relu", "build": "float", "arch": "sm_80", "seconds": 0.25, "cached": False, "stored": False}])
    rc, _, err = run(["precompile", "--arch", "sm_80"], capsys)  # compiled, but kept nowhere: not a success
    assert rc == 1 and "could not be stored" in err and "GPUCONV_CUDA_CACHE" in err

    def no_cupy(device, arch=None, jobs=None):
        raise ModuleNotFoundError("No module named 'cupy_backends'")
    monkeypatch.setattr(kernels, "precompile", no_cupy)
    rc, _, err = run(["precompile", "--arch", "sm_90"], capsys)  # a line, not a traceback
    assert rc == 1 and "NVRTC could not be imported (No module named 'cupy_backends')" in err
    assert "make install EXTRAS=dev,nvrtc" in err and "Traceback" not in err
    for bad in ("90", "sm_xx", "sm90"):
        with pytest.raises(SystemExit):
            cli.main(["precompile", "--arch", bad])
        assert "not an NVRTC target: write sm_NN" in capsys.readouterr().err
    if not backend.cuda_available():
        rc, _, err = run(["precompile"], capsys)
        assert rc == 1 and "name its target with --arch" in err and len(asked) == 1


def test_a_gpu_run_compiles_its_builds_first(capsys, monkeypatch):
    """gpuconv train on a GPU compiles the kernel builds of its precision at once before the first
    step, and says so when it compiled any (a machine's first run)."""
    from gpuconv import kernels
    import ml_dtypes
    asked = []

    def fake(device, dtypes=None, tf32=True):
        asked.append((device, [np.dtype(d) for d in dtypes], tf32))
        return [{"file": "relu", "build": "bfloat16", "arch": "sm_90", "seconds": 1.0, "cached": len(asked) > 1,
                 "stored": True}]

    monkeypatch.setattr(kernels, "precompile", fake)
    cli.precompile_for(1, "bf16")
    assert asked == [(1, [np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32)], False)]
    assert "compiled 1 kernel builds for this GPU" in capsys.readouterr().err
    cli.precompile_for(0, "tf32")
    assert asked[1] == (0, [np.dtype(np.float32)] * 2, True) and capsys.readouterr().err == ""  # all cached: silent
    monkeypatch.setattr(kernels, "precompile", lambda *a, **k: (_ for _ in ()).throw(kernels.KernelCompileError("x")))
    cli.precompile_for(0, "bf16")  # not fatal: the modules compile at their first use, and say why there
    assert "compiling the kernels ahead failed (KernelCompileError: x)" in capsys.readouterr().err


def test_python_dash_m_gpuconv_runs():
    proc = subprocess.run([sys.executable, "-m", "gpuconv", "info"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "gpuconv" in proc.stdout and "CUDA" in proc.stdout


def test_bench_dispatches_to_a_checkout_script(tmp_path, monkeypatch, capsys):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "bench_cpu.py").write_text(
        "import sys, pathlib\npathlib.Path(sys.argv[0]).with_name('argv.json').write_text("
        "__import__('json').dumps(sys.argv[1:]))\nraise SystemExit(3 if '--fail' in sys.argv else 0)\n")
    monkeypatch.setattr(cli, "benchmarks_dir", lambda: bench)
    rc, _, _ = run(["bench", "cpu", "--quick", "--json"], capsys)
    assert rc == 0 and json.loads((bench / "argv.json").read_text()) == ["--quick", "--json"]
    rc, _, _ = run(["bench", "cpu", "--fail"], capsys)  # the script's exit status comes back
    assert rc == 3
    from gpuconv import backend
    if not backend.cuda_available():
        rc, _, _ = run(["bench"], capsys)  # the default without a GPU: bench_cpu, no arguments
        assert rc == 0 and json.loads((bench / "argv.json").read_text()) == []
        rc, _, _ = run(["bench", "--quick", "--only", "conv"], capsys)  # the default's options, its name left out
        assert rc == 0 and json.loads((bench / "argv.json").read_text()) == ["--quick", "--only", "conv"]
    rc, _, err = run(["bench", "nope"], capsys)
    assert rc == 2 and "available: cpu" in err
    monkeypatch.setattr(cli, "benchmarks_dir", lambda: None)
    rc, _, err = run(["bench"], capsys)
    assert rc == 2 and "source checkout" in err


@pytest.mark.parametrize("sig, rc, said", [(signal.SIGINT, 130, "interrupted at epoch"),
                                            (signal.SIGTERM, 143, "stopped by SIGTERM at epoch")])
def test_a_stop_signal_during_training_saves_a_checkpoint_that_resumes(tmp_path, capsys, sig, rc, said):
    """Ctrl-C, and SIGTERM as a scheduler's preemption or `timeout` sends it: the step in flight
    finishes, a checkpoint is written, and --resume finishes the run."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "gpuconv", "train", "--model", "seed", "--epochs", "3", "--limit", "1500",
           "--batch-size", "16", "--log-every", "5", "--device", "cpu", "--data", str(SUBSET), "--out", str(out),
           "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 2:  # training is under way
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == rc, stderr
    assert "Traceback" not in stderr
    assert said in stderr and f"gpuconv train --out {out} --resume" in stderr
    with np.load(out / "checkpoint.npz", allow_pickle=False) as z:
        step, epoch, epoch_step = int(z["meta/step"]), int(z["meta/epoch"]), int(z["meta/epoch_step"])
    assert step > 0
    assert epoch < 3 and step < 3 * 94  # 1500 images / 16 -> 94 batches per epoch
    # evaluate says what the weights trained: it said "after 0 epoch(s)" of a checkpoint steps into epoch 1
    rc, said_eval, _ = run(["evaluate", "--checkpoint", out / "checkpoint.npz", "--data", SUBSET], capsys)
    assert rc == 0 and (f"after {epoch} epoch(s)" + (f" and {epoch_step} step(s) of epoch {epoch + 1}, "
                                                      if epoch_step else ", ")) in said_eval
    # Resume (in this process, to keep the test short): the stored settings finish the run.
    rc, _, err = run(["train", "--out", out, "--resume", "--data", SUBSET, "--no-progress"], capsys)
    assert rc == 0, err
    assert f"step {step}" in err
    arrays = ckpt.load_checkpoint(out)
    assert int(arrays["meta/epoch"]) == 3 and int(arrays["meta/step"]) == 3 * 94
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == sorted(steps)  # one history, no step written twice


def test_version_and_help_show_the_per_model_defaults(capsys):
    import gpuconv
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"gpuconv {gpuconv.__version__}"
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default per recipe: seed 8, three_layer 8, fast 16" in text and "fast 512" in text
    # a recipe of its own, not only a model's: airbench95 trains 15 epochs, airbench94_muon batch 2000
    assert "airbench95 15," in text and "airbench94_muon 2000" in text
    for command in ("train", "evaluate", "predict", "summary", "info", "precompile", "bench"):
        with pytest.raises(SystemExit):  # each command's own --help says what it does
            cli.main([command, "--help"])
        usage_and_description = capsys.readouterr().out.split("options:")[0].split("\n\n")
        assert len(usage_and_description) >= 2 and usage_and_description[1].strip(), (command, usage_and_description)
    for command in ("evaluate", "predict"):  # the checkpoint's level: the run's --tta, not only its recipe's
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "default: the level the run evaluated at, its --tta, else its recipe's" in \
            " ".join(capsys.readouterr().out.split())


# ----------------------------------------------------------------------------- using a trained model
def test_train_writes_best_checkpoint_and_curves(trained):
    from PIL import Image
    with Image.open(trained / "curves.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    best = ckpt.load_checkpoint(trained / "best.npz")
    history = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in history if r["kind"] == "epoch"]
    best_epoch = max(range(len(epochs)), key=lambda i: (epochs[i]["val_acc"], i)) + 1
    assert int(best["meta/epoch"]) == best_epoch


def test_load_model_predicts_exactly_what_evaluate_counts(trained, capsys):
    import gpuconv
    from gpuconv.data import load_cifar10, train_val_split
    model = gpuconv.load_model(trained / "checkpoint.npz")
    _, val = train_val_split(load_cifar10(SUBSET.parent).train, val_batch=5)
    probs = model.predict(val.images)
    assert probs.shape == (len(val), 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    rc, out, _ = run(["evaluate", "--checkpoint", trained / "checkpoint.npz", "--data", SUBSET, "--json"], capsys)
    acc = json.loads(out)["accuracy"]
    assert float((model.predict_classes(val.images) == val.labels).mean()) == acc  # exactly
    hwc = val.images[:5].transpose(0, 2, 3, 1)  # the (N, 32, 32, 3) layout of image files
    np.testing.assert_allclose(model.predict(hwc), probs[:5], rtol=1e-5)  # another batch size: GEMM rounding
    with pytest.raises(TypeError, match=r"uint8 pixels.*for float images in \[0, 1\]"):
        model.predict(val.images.astype(np.float32))
    with pytest.raises(TypeError, match=r"uint8 pixels.*np.asarray\(images, dtype=np.uint8\)"):
        model.predict(val.images[:1].astype(int).tolist())  # a list of ints
    empty = val.images[:0]
    assert model.logits(empty).shape == model.predict(empty).shape == (0, 10)
    assert model.predict_classes(empty).shape == (0,)
    with pytest.raises(ValueError, match="the model takes 32x32"):
        model.predict(np.zeros((1, 3, 16, 16), np.uint8))
    from gpuconv import kernels
    on_sim = gpuconv.load_model(trained / "checkpoint.npz", device="sim")  # predicts where it was loaded
    with kernels.launch_log() as log:
        np.testing.assert_allclose(on_sim.predict(val.images[:2]), probs[:2], rtol=1e-4, atol=1e-6)
    assert on_sim.device.kind == "sim" and any(n.startswith("conv2d_forward") for n in log.names)


def test_predict_command_reads_images_and_arrays(trained, tmp_path, capsys):
    from PIL import Image
    from gpuconv.data import load_cifar10
    images = load_cifar10(SUBSET.parent).train.images[:3].transpose(0, 2, 3, 1)
    np.save(tmp_path / "three.npy", images)
    Image.fromarray(images[0]).resize((96, 80)).save(tmp_path / "big.png")  # any size: resized
    Image.fromarray(images[1]).convert("L").save(tmp_path / "gray.jpg")      # any mode: converted to RGB
    rc, out, err = run(["predict", "--checkpoint", trained / "checkpoint.npz", "--top", "3", "--json",
                        tmp_path / "three.npy", tmp_path / "big.png", tmp_path / "gray.jpg"], capsys)
    assert rc == 0, err
    preds = json.loads(out)["predictions"]
    assert [(p["source"].split("/")[-1], p["index"]) for p in preds] == [
        ("three.npy", 0), ("three.npy", 1), ("three.npy", 2), ("big.png", 0), ("gray.jpg", 0)]
    for p in preds:
        assert len(p["top"]) == 3 and p["top"][0][0] == p["label"] and 0 <= p["label_index"] < 10
        assert p["top"][0][1] >= p["top"][1][1] >= p["top"][2][1]
    rc, out, _ = run(["predict", "--checkpoint", trained / "checkpoint.npz", tmp_path / "three.npy"], capsys)
    assert rc == 0 and out.count("\n") == 3 and "three.npy[2]:" in out
    with open(tmp_path / "ONE.NPY", "wb") as f:  # an upper-case name (Windows, macOS): still an array, indexed
        np.save(f, images[:1])
    rc, out, _ = run(["predict", "--checkpoint", trained / "checkpoint.npz", tmp_path / "ONE.NPY"], capsys)
    assert rc == 0 and out.startswith(f"{tmp_path / 'ONE.NPY'}[0]: ")
    rc, out, _ = run(["predict", "--checkpoint", trained / "checkpoint.npz", "--json", "--tta", "2", "--top", "3",
                      tmp_path / "three.npy"], capsys)  # six views per image: other probabilities
    assert rc == 0 and [p["top"] for p in json.loads(out)["predictions"]] != [p["top"] for p in preds[:3]]
    rc, _, err = run(["predict", "--checkpoint", trained / "checkpoint.npz", tmp_path / "nope.png"], capsys)
    assert rc == 1 and "nope.png does not exist" in err


def test_json_output_is_strict_json_when_the_logits_overflow(trained, tmp_path, capsys):
    """A model whose logits overflow (weights finite but huge) gives NaN probabilities and loss:
    --json wrote them as bare NaN tokens, which JSON readers (jq, JavaScript, Python's json with
    parse_constant) refuse. They are null."""
    arrays = ckpt.load_checkpoint(trained / "checkpoint.npz")
    head = [k for k, v in arrays.items() if k.startswith("model/") and k.endswith("weight") and v.ndim == 2]
    assert head
    for k in head:
        arrays[k] = (arrays[k] * np.float32(3e38)).astype(np.float32)  # finite; the logits are not
    ckpt.save_checkpoint(tmp_path / "huge.npz", arrays)
    from gpuconv.data import load_cifar10
    np.save(tmp_path / "two.npy", load_cifar10(SUBSET.parent).train.images[:2].transpose(0, 2, 3, 1))

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))
    rc, out, err = run(["predict", "--checkpoint", tmp_path / "huge.npz", "--json", tmp_path / "two.npy"], capsys)
    assert rc == 0, err
    tops = [p["top"] for p in strict(out)["predictions"]]
    assert any(prob is None for top in tops for _, prob in top)
    rc, out, err = run(["evaluate", "--checkpoint", tmp_path / "huge.npz", "--data", SUBSET, "--json",
                        "--device", "cpu"], capsys)
    assert rc == 0, err
    assert strict(out)["loss"] is None


def test_16_bit_and_float_images_are_scaled_or_refused(tmp_path):
    """Pillow's convert('RGB') clips a 16-bit PNG's values to 255 (an all-white image, predicted
    without a word); it is scaled to 8 bits, and pixels of unknown range are refused."""
    from PIL import Image
    from gpuconv.inference import load_images
    gray16 = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    images, _ = load_images([tmp_path / "g16.png"])
    want = np.round(gray16 / 257).astype(np.uint8)
    assert images.shape == (1, 3, 32, 32) and all(np.array_equal(images[0, c], want) for c in range(3))
    Image.fromarray(gray16.astype(np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(ValueError, match="floating-point pixels.*8-bit image"):
        load_images([tmp_path / "f.tiff"])



def test_a_photo_is_read_upright_as_its_exif_orientation_says(tmp_path):
    """A camera saves its sensor's rows with an EXIF orientation tag, and every viewer shows the
    picture turned by it; load_images (behind `gpuconv predict`) read the rows as stored, so a
    portrait photo was classified lying on its side."""
    from PIL import Image
    from gpuconv.inference import load_images
    upright = np.kron(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, np.ones((4, 4), np.uint8))  # no symmetry
    rgb = np.stack([upright, 255 - upright, upright // 2], axis=2)
    Image.fromarray(rgb).save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the stored rows are shown turned 90 degrees clockwise
    Image.fromarray(np.rot90(rgb).copy()).save(tmp_path / "phone.jpg", exif=exif, quality=100, subsampling=0)
    Image.fromarray(rgb).save(tmp_path / "damaged.jpg", exif=b"Exif\x00\x00not a TIFF header",
                              quality=100, subsampling=0)
    images, _ = load_images([tmp_path / "upright.png", tmp_path / "phone.jpg", tmp_path / "damaged.jpg"])
    assert np.abs(images[0].astype(int) - images[1]).max() <= 4  # JPEG's rounding
    assert np.abs(images[0].astype(int) - images[2]).max() <= 4  # an unreadable EXIF block: as stored


def test_a_16_bit_image_is_read_upright_too(tmp_path):
    """A 16-bit image is scaled to 8 bits into a new image, which dropped the file's EXIF block, so
    its orientation was never applied (PNG's eXIf chunk, a TIFF's orientation tag alike)."""
    from PIL import Image, TiffImagePlugin
    from gpuconv.inference import load_images
    upright = (np.kron(np.arange(64).reshape(8, 8), np.ones((4, 4))) * 1000).astype(np.uint16)
    Image.fromarray(upright).save(tmp_path / "upright.png")
    exif, tags = Image.Exif(), TiffImagePlugin.ImageFileDirectory_v2()
    exif[0x0112] = tags[0x0112] = 6  # the stored rows are shown turned 90 degrees clockwise
    Image.fromarray(np.rot90(upright).copy()).save(tmp_path / "turned.png", exif=exif)
    Image.fromarray(np.rot90(upright).copy()).save(tmp_path / "turned.tif", tiffinfo=tags)
    images, _ = load_images([tmp_path / "upright.png", tmp_path / "turned.png", tmp_path / "turned.tif"])
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])



def test_a_bad_npy_file_is_named_among_several(tmp_path):
    """An .npy file of float pixels, of the wrong size or cut short was refused without its name
    (image files' errors give theirs), so among several inputs the bad one was left to guess."""
    from gpuconv.inference import load_images
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((2, 32, 32, 3), np.uint8))
    np.save(tmp_path / "floats.npy", np.zeros((2, 32, 32, 3), np.float32))
    np.save(tmp_path / "big.npy", np.zeros((2, 64, 64, 3), np.uint8))
    (tmp_path / "cut.npy").write_bytes(good.read_bytes()[:200])
    with pytest.raises(TypeError, match=r"floats\.npy: images must be uint8"):
        load_images([good, tmp_path / "floats.npy"])
    with pytest.raises(ValueError, match=r"big\.npy: images are 64x64; the model takes 32x32"):
        load_images([good, tmp_path / "big.npy"])
    with pytest.raises(ValueError, match=r"cut\.npy: "):
        load_images([good, tmp_path / "cut.npy"])
    (tmp_path / "empty.npy").write_bytes(b"")  # (NumPy's EOFError: `gpuconv predict` showed a traceback)
    with pytest.raises(ValueError, match=r"empty\.npy: the file is empty"):
        load_images([good, tmp_path / "empty.npy"])
    # another file named .npy: NumPy took it for a pickle and said to load it unsafely (allow_pickle=True)
    (tmp_path / "text.npy").write_bytes(b"label,path\n")
    with pytest.raises(ValueError, match=r"text\.npy: not a NumPy \.npy file: give arrays saved with np\.save"):
        load_images([good, tmp_path / "text.npy"])
    # images of two sizes saved as one object array: NumPy's error said to load it with allow_pickle=True
    np.save(tmp_path / "ragged.npy", np.array([np.zeros((32, 32, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)],
                                              dtype=object), allow_pickle=True)
    with pytest.raises(TypeError, match=r"ragged\.npy: it holds an array of Python objects .*not unpickled .*"
                                        r"give the image files"):
        load_images([good, tmp_path / "ragged.npy"])



def test_a_directory_given_as_an_image_is_named_a_directory(tmp_path):
    """`gpuconv predict photos/` said "photos does not exist" of a directory that does."""
    from gpuconv.inference import load_images
    (tmp_path / "photos").mkdir()
    with pytest.raises(IsADirectoryError, match=r"photos is a directory: give the image files .* in it"):
        load_images([tmp_path / "photos"])


def test_summary_counts_parameters_and_flops(capsys):
    from gpuconv import models
    net = models.three_layer_convnet()
    text = net.summary((3, 32, 32))
    assert f"{net.num_parameters():,}" in text
    conv_flops = 32 * 32 * 32 * (2 * 3 * 7 * 7 + 1)  # 32 filters of 7x7x3 over 32x32, with bias
    assert f"{conv_flops:,}" in text
    rc, out, _ = run(["summary", "--model", "fast", "--width", "8"], capsys)
    assert rc == 0 and "Residual (x + inner)" in out and "total" in out
    rc, out, err = run(["summary", "--model", "three_layer", "--width", "8"], capsys)
    assert rc == 0 and "the three_layer model ignores it" in err
    # a recipe's own network: airbench95 is airbench94's at 128/384/384, which --width 32 scales
    # to 32/96/96 (its ratio, as --width's help says), not airbench94's 32/128/128
    for width, widths in ((None, [128, 384, 384]), ("32", [32, 96, 96])):
        rc, out, _ = run(["summary", "--recipe", "airbench95"] + (["--width", width] if width else []), capsys)
        net = models.airbench94(widths=widths)
        assert rc == 0 and f"{net.num_parameters():,}" in out, out
    rc, out, _ = run(["summary", "--model", "airbench94"], capsys)
    assert f"{models.airbench94().num_parameters():,}" in out


def test_a_full_disk_loses_no_saved_work(tmp_path, capsys, monkeypatch):
    """The disk fills while epoch 2's checkpoint is written: one error line, epoch 1's checkpoint
    intact (the write goes to a temporary file, renamed only once complete), no temporary file or
    lock left behind, and --resume then finishes the run."""
    import errno
    real_savez, calls = np.savez, []

    def savez(f, **arrays):
        calls.append(1)
        if len(calls) == 2:  # epoch 1's checkpoint went through; epoch 2's does not
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(f, **arrays)

    monkeypatch.setattr(ckpt.np, "savez", savez)
    argv = ["train", "--model", "seed", "--epochs", "2", "--limit", "128", "--batch-size", "64", "--data", SUBSET,
            "--out", tmp_path, "--no-progress"]
    rc, _, err = run(argv, capsys)
    assert rc == 1
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == [line for line in errors if "No space left on device" in line] and len(errors) == 1, err
    assert f"could not write {tmp_path / 'checkpoint.npz'}" in errors[0] and "epoch 1's end" in errors[0]
    saved = ckpt.load_checkpoint(tmp_path / "checkpoint.npz")
    assert int(saved["meta/epoch"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "temporary files or lock left"
    monkeypatch.setattr(ckpt.np, "savez", real_savez)
    rc, _, err = run(["train", "--out", tmp_path, "--resume", "--data", SUBSET, "--no-progress"], capsys)
    assert rc == 0, err
    assert int(ckpt.load_checkpoint(tmp_path / "checkpoint.npz")["meta/epoch"]) == 2


def test_airbench94_muon_recipe_trains_on_real_images(tmp_path, capsys):
    """airbench94_muon end to end on the real subset, scaled down (width 8, 600 images, 3 epochs of
    100): the loss falls every epoch and the accuracy is well above chance (0.34 measured). Its head
    lr is for its own head (divided by the width, unit-std weights): on airbench94's 1/9 head it
    diverged at once (loss 3.9 in the first epoch, chance accuracy)."""
    rc, out, err = run(["train", "--recipe", "airbench94_muon", "--width", "8", "--epochs", "3", "--limit", "600",
                        "--batch-size", "100", "--device", "cpu", "--data", SUBSET, "--out", tmp_path,
                        "--no-progress"], capsys)
    assert rc == 0, err
    config = ckpt.read_config(ckpt.load_checkpoint(tmp_path))
    assert config["kwargs"]["scaling_factor"] is None and config["kwargs"]["head_std"] == 1.0
    losses = [json.loads(x)["train_loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["kind"] == "epoch"]
    assert len(losses) == 3 and 2.4 > losses[0] > losses[1] > losses[2], losses
    assert float(out.split("accuracy")[1].split()[0]) > 0.2, err


def test_airbench96_recipe_trains_on_real_images(tmp_path, capsys):
    """airbench96 end to end on the real subset, scaled down (width 8: 8/24/32 channels, 600 images,
    3 epochs of 50): the residual blocks, cutout, 4-pixel translations and the warmup-then-decay
    schedule learn: the loss falls every epoch, the accuracy is above chance; --cutout 0 turns the
    cutout off."""
    argv = ["train", "--recipe", "airbench96", "--width", "8", "--epochs", "3", "--limit", "600", "--batch-size",
            "50", "--device", "cpu", "--data", SUBSET, "--no-progress"]
    rc, out, err = run(argv + ["--out", tmp_path / "a"], capsys)
    assert rc == 0, err
    config = ckpt.read_config(ckpt.load_checkpoint(tmp_path / "a"))
    assert config["constructor"] == "airbench96" and config["kwargs"]["widths"] == [8, 24, 32]
    args = config["train_args"]
    assert (args["cutout"], args["padding"], args["schedule_kwargs"]["warmup_fraction"]) == (12, 4, 0.1)
    losses = [json.loads(x)["train_loss"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["kind"] == "epoch"]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2], losses
    assert float(out.split("accuracy")[1].split()[0]) > 0.15, err
    # one step, no validation: what is checked is the setting the run recorded
    rc, _, err = run(argv + ["--epochs", "1", "--limit", "50", "--val-split", "none", "--cutout", "0",
                             "--out", tmp_path / "b"], capsys)
    assert rc == 0, err
    assert ckpt.read_config(ckpt.load_checkpoint(tmp_path / "b"))["train_args"]["cutout"] == 0


@pytest.mark.slow
def test_airbench94_recipe_trains_on_real_images(tmp_path, capsys):
    """The recipe end to end on the real subset, scaled down (width 8, 600 images, 3 epochs): the
    whitening, GELU blocks, reflect translations, lookahead and TTA level 2 learn: the loss falls every
    epoch and the accuracy is above chance."""
    rc, out, err = run(["train", "--recipe", "airbench94", "--width", "8", "--epochs", "3", "--limit", "600",
                        "--batch-size", "50", "--device", "cpu", "--data", SUBSET, "--out", tmp_path,
                        "--no-progress"], capsys)
    assert rc == 0, err
    config = ckpt.read_config(ckpt.load_checkpoint(tmp_path))
    assert config["constructor"] == "airbench94" and config["kwargs"]["widths"] == [8, 32, 32]
    assert config["train_args"]["recipe"] == "airbench94" and config["train_args"]["tta"] == 2
    assert config["train_args"]["precision"] == "fp32"  # the recipe's 'auto', recorded as what the CPU resolved it to
    assert "test-time augmentation level 2" in err
    acc = float(out.split("accuracy")[1].split()[0])
    losses = [json.loads(x)["train_loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["kind"] == "epoch"]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2], losses
    # 1,800 examples are two of airbench's 1024-example steps (its lr is per example): far from
    # trained, but above chance (0.1; 0.18 measured) when every piece works.
    assert acc > 0.15, err
    # evaluate and predict score at the run's TTA level unless told otherwise: the accuracy train printed
    rc, out, err = run(["evaluate", "--checkpoint", tmp_path / "checkpoint.npz", "--data", SUBSET, "--json"], capsys)
    result = json.loads(out)
    assert rc == 0 and result["tta"] == 2 and result["accuracy"] == pytest.approx(acc, abs=1e-4), (result, acc)
    rc, out, _ = run(["evaluate", "--checkpoint", tmp_path / "checkpoint.npz", "--data", SUBSET, "--json", "--tta", "0"],
                     capsys)
    assert json.loads(out)["tta"] == 0 and json.loads(out)["loss"] != result["loss"]
    import gpuconv
    from gpuconv.data import load_cifar10, train_val_split
    model = gpuconv.load_model(tmp_path / "checkpoint.npz")
    _, val = train_val_split(load_cifar10(SUBSET.parent).train, val_batch=5)
    assert model.tta == 2 and float((model.predict_classes(val.images) == val.labels).mean()) == result["accuracy"]
    assert not np.array_equal(model.logits(val.images[:50]), model.logits(val.images[:50], tta=0))


def test_cuda_graph_trains_fp16_as_the_eager_run(tmp_path, capsys):
    """--cuda-graph takes fp16 (what 'auto' is on a T4): its loss scale and overflow skips stay
    on the device, so the run trains as one without the flag, bit for bit, loss scale included."""
    argv = ["train", "--model", "seed", "--epochs", "2", "--limit", "40", "--batch-size", "10", "--device", "cpu",
            "--data", SUBSET, "--no-progress", "--precision", "fp16"]
    saved = {}
    for graphed in (False, True):
        out = tmp_path / ("graphed" if graphed else "eager")
        rc, _, err = run(argv + ["--out", out] + (["--cuda-graph"] if graphed else []), capsys)
        assert rc == 0, err
        saved[graphed] = {k: v for k, v in ckpt.load_checkpoint(out / "checkpoint.npz").items()
                          if k.startswith(("model/", "amp/"))}
    assert saved[True].keys() == saved[False].keys() and any(k.startswith("amp/") for k in saved[False])
    for k in saved[False]:
        np.testing.assert_array_equal(saved[True][k], saved[False][k], err_msg=k)


def test_every_precision_flag_says_what_auto_is_on_a_t4():
    """train's, evaluate's and predict's --precision help say what 'auto' resolves to, the T4's fp16 included."""
    sub = next(a for a in cli.build_parser()._actions if a.choices and "evaluate" in a.choices).choices
    for name in ("train", "evaluate", "predict"):
        flag = next(a for a in sub[name]._actions if "--precision" in a.option_strings)
        assert "bf16 on a GPU" in flag.help and "fp16 on 7.5, a T4" in flag.help, (name, flag.help)


def test_the_resume_command_printed_after_a_stop_runs_as_pasted_with_spaces_and_quotes(tmp_path, capsys,
                                                                                      monkeypatch):
    """An --out and --data with spaces, a quote and a non-ASCII letter: the "Resume with:" line is
    quoted as a shell splits it, and run as pasted it finishes the run."""
    import shlex
    from gpuconv import trainer as T
    out, data = tmp_path / "my runs" / "it's été", tmp_path / "cifar data"
    data.symlink_to(SUBSET)
    real_step = T.Trainer.train_step

    def step_then_stop(self, x, y):
        real_step(self, x, y)
        self._stop_requested = signal.SIGINT  # as Ctrl-C after this step

    monkeypatch.setattr(T.Trainer, "train_step", step_then_stop)
    rc, _, err = run(["train", "--model", "seed", "--epochs", "2", "--limit", "128", "--batch-size", "64",
                      "--data", data, "--out", out, "--no-progress", "--device", "cpu"], capsys)
    assert rc == 130, err
    said = [line.split("Resume with: ", 1)[1] for line in err.splitlines() if line.startswith("Resume with: ")]
    assert len(said) == 1, err
    argv = shlex.split(said[0])
    assert argv[:2] == ["gpuconv", "train"] and argv[argv.index("--out") + 1] == str(out)
    assert argv[argv.index("--data") + 1] == str(data)
    monkeypatch.setattr(T.Trainer, "train_step", real_step)
    rc, _, err = run(argv[1:] + ["--no-progress"], capsys)
    assert rc == 0, err
    assert int(ckpt.load_checkpoint(out)["meta/epoch"]) == 2


def test_the_resume_command_names_the_gpuconv_the_run_was_started_by(tmp_path, capsys, monkeypatch):
    """`make train` runs .venv/bin/gpuconv, which no activated environment has put on PATH: the
    "Resume with:" line starts with that path (a bare `gpuconv` is not found there, or is another
    install's), and with `gpuconv` where the shell finds this same script by that name;
    `python -m gpuconv` is told as it was started."""
    import shlex
    import types
    from gpuconv import trainer as T
    script = tmp_path / "clone" / ".venv" / "bin" / "gpuconv"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    real_step = T.Trainer.train_step

    def step_then_stop(self, x, y):
        real_step(self, x, y)
        self._stop_requested = signal.SIGINT  # as Ctrl-C after this step

    monkeypatch.setattr(T.Trainer, "train_step", step_then_stop)
    monkeypatch.setattr(sys, "argv", [str(script), "train"])
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))  # no gpuconv on PATH, as after `make train`
    rc, _, err = run(["train", "--model", "seed", "--epochs", "1", "--limit", "128", "--batch-size", "64",
                      "--data", SUBSET, "--out", tmp_path / "run", "--no-progress", "--device", "cpu"], capsys)
    assert rc == 130, err
    said = [line.split("Resume with: ", 1)[1] for line in err.splitlines() if line.startswith("Resume with: ")]
    assert len(said) == 1 and shlex.split(said[0])[:3] == [str(script), "train", "--out"], err
    monkeypatch.setenv("PATH", str(script.parent))  # an activated environment: this script is `gpuconv`
    assert cli._program() == ["gpuconv"]
    other = tmp_path / "other" / "gpuconv"  # PATH's gpuconv is another install's
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    monkeypatch.setenv("PATH", str(other.parent))
    assert cli._program() == [str(script)]
    monkeypatch.setitem(sys.modules, "__main__",
                        types.SimpleNamespace(__spec__=types.SimpleNamespace(name="gpuconv.__main__")))
    monkeypatch.setattr(sys, "argv", [str(REPO / "gpuconv" / "__main__.py"), "train"])
    assert cli._program() == [sys.executable, "-m", "gpuconv"]  # (its python is not on this PATH)


def test_the_resume_command_is_quoted_for_the_windows_shells_and_names_the_exe_launcher(tmp_path, monkeypatch):
    """On Windows the printed commands were quoted for a POSIX shell: shlex quotes every word with a
    backslash (every Windows path) in single quotes, which cmd.exe keeps as part of the word and
    which make a first word an expression to PowerShell. There they take double quotes where a word
    has a space or a quote (subprocess.list2cmdline), and nothing otherwise. And pip's launcher
    gpuconv.exe starts the run with sys.argv[0] the path without '.exe', which names no file: the
    line said a bare `gpuconv` instead of the launcher that started it."""
    import shlex

    from gpuconv._console import command_line
    words = [r"C:\Users\me\proj\.venv\Scripts\gpuconv", "train", "--out", r"D:\my runs\it's", "--resume"]
    assert command_line(words, windows=True) == (r'C:\Users\me\proj\.venv\Scripts\gpuconv train --out '
                                                 '"D:\\my runs\\it\'s" --resume')
    assert command_line(words, windows=False) == shlex.join(words)
    assert command_line(["gpuconv", "train", "--out", "runs/a b"]) == "gpuconv train --out 'runs/a b'"  # (POSIX)
    launcher = tmp_path / "venv" / "Scripts" / "gpuconv.exe"
    launcher.parent.mkdir(parents=True)
    launcher.write_bytes(b"MZ")
    monkeypatch.setattr(sys, "argv", [str(launcher.with_suffix("")), "train"])  # as pip's launcher leaves it
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    assert cli._program() == [str(launcher.with_suffix(""))]


def test_a_damaged_checkpoint_on_resume_points_to_the_runs_intact_best_npz(tmp_path, capsys):
    """checkpoint.npz truncated after the run (a copy by hand, a disk error): --resume names it, and
    the run's best.npz, a whole training state, as the way on; done as said, the run finishes."""
    argv = ["train", "--model", "seed", "--epochs", "2", "--limit", "128", "--batch-size", "64", "--data", SUBSET,
            "--out", tmp_path, "--no-progress", "--device", "cpu"]
    assert run(argv, capsys)[0] == 0
    best_epoch = int(ckpt.load_checkpoint(tmp_path / "best.npz")["meta/epoch"])
    whole = (tmp_path / "checkpoint.npz").read_bytes()
    (tmp_path / "checkpoint.npz").write_bytes(whole[:len(whole) // 3])
    rc, _, err = run(argv + ["--resume"], capsys)
    assert rc == 1 and f"checkpoint {tmp_path / 'checkpoint.npz'} is truncated" in err
    assert f"{tmp_path / 'best.npz'} is intact, the training state of epoch {best_epoch}" in err
    assert f"`cp {tmp_path / 'best.npz'} {tmp_path / 'checkpoint.npz'}` and --resume" in err
    (tmp_path / "checkpoint.npz").write_bytes((tmp_path / "best.npz").read_bytes())
    rc, _, err = run(argv + ["--resume"], capsys)
    assert rc == 0, err
    assert int(ckpt.load_checkpoint(tmp_path / "checkpoint.npz")["meta/epoch"]) == 2
    (tmp_path / "best.npz").write_bytes(b"")  # both damaged: no way on through best.npz is offered
    (tmp_path / "checkpoint.npz").write_bytes(b"")
    rc, _, err = run(argv + ["--resume"], capsys)
    assert rc == 1 and "is an empty file" in err and "best.npz is intact" not in err


def test_an_out_that_cannot_be_written_is_named_with_the_way_on(tmp_path, capsys, monkeypatch):
    """A read-only mount or a full disk under --out: the error names the directory and what to
    do ('[Errno 30] Read-only file system: OUT/.gpuconv-train.lock' named a file of gpuconv's),
    keeps the original's errno, and leaves no lock file behind."""
    import errno
    import pathlib
    from gpuconv import _files

    def refuse(number):
        def fail(*args, **kwargs):
            raise OSError(number, os.strerror(number))
        return fail

    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: refuse(errno.EROFS)() if os.path.basename(path) ==
                        _files.LOCK_NAME else real_open(path, *a, **k))
    with pytest.raises(OSError) as info:
        with _files.directory_lock(tmp_path):
            pass
    assert info.value.errno == errno.EROFS
    assert str(info.value) == (f"cannot write into {tmp_path} (Read-only file system): make it writable to you "
                               "(a read-only mount?), or train into another --out")
    monkeypatch.setattr(os, "open", real_open)
    monkeypatch.setattr(os, "write", refuse(errno.ENOSPC))  # the lock file made, its holder's line not written
    with pytest.raises(OSError, match=rf"^cannot write into {tmp_path} \(No space left on device\): free space on "
                                      r"its disk, or train into another --out$"):
        with _files.directory_lock(tmp_path):
            pass
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(pathlib.Path, "mkdir", refuse(errno.EROFS))
    rc, _, err = run(["train", "--out", tmp_path / "new", "--data", SUBSET], capsys)
    assert rc == 1 and f"error: cannot write into {tmp_path / 'new'} (Read-only file system)" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_whose_checkpoint_cannot_be_written_exits_74_and_says_nothing_was_saved(tmp_path, capsys,
                                                                                      monkeypatch, sig):
    """A stopped run whose last save fails (a full disk) is neither a saved stop (130/143) nor an
    ordinary error (1): it exits 74 (as --help and the README say), says its progress was not
    saved, names the file and the checkpoint that is intact, and how to go on."""
    import errno
    from gpuconv import checkpoint as C
    from gpuconv import trainer as T
    out = tmp_path / "run"
    real_step, real_save = T.Trainer.train_step, C.save_checkpoint
    stopping = []

    def step_then_stop(self, x, y):
        real_step(self, x, y)
        if self.epoch == 1 and self.epoch_step == 1:  # into epoch 2, with epoch 1's checkpoint on disk
            self._stop_requested = sig
            stopping.append(True)

    def full_disk_once_stopped(path, arrays):
        if stopping:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(path, arrays)

    monkeypatch.setattr(T.Trainer, "train_step", step_then_stop)
    monkeypatch.setattr(C, "save_checkpoint", full_disk_once_stopped)
    rc, _, err = run(["train", "--model", "seed", "--epochs", "3", "--limit", "128", "--batch-size", "32",
                      "--data", SUBSET, "--out", out, "--no-progress", "--device", "cpu"], capsys)
    assert rc == cli.EXIT_STOPPED_UNSAVED == 74, err
    assert "checkpoint saved" not in err and "Traceback" not in err
    sub = next(a for a in cli.build_parser()._actions if a.choices and "train" in a.choices).choices
    assert "74 when it was stopped but that checkpoint could not be written" in " ".join(sub["train"].format_help().split())
    how = "interrupted" if sig == signal.SIGINT else "stopped by SIGTERM"
    assert f"training {how} at epoch 2, batch 2 (step 6)" in err
    assert f"could not write {out / 'checkpoint.npz'} at step 6 (No space left on device)" in err
    assert "its progress was NOT saved" in err
    assert f"the checkpoint of epoch 1's end (step 4) is intact at {out / 'checkpoint.npz'}: free space on its disk" in err
    assert f"Resume with: gpuconv train --out {out} --resume --data {SUBSET}" in err
    assert int(ckpt.load_checkpoint(out)["meta/step"]) == 4


def test_an_out_that_fails_to_be_written_is_told_by_its_error(tmp_path, monkeypatch):
    """The way on from an --out that cannot be written follows the error, as a failed write of a
    run's files does (Trainer's messages): a disk error or a quota is not told to make the directory
    writable, and a read-only mount still is."""
    import errno
    from gpuconv import _files

    real_open = os.open
    for number, fix in ((errno.EIO, "the disk reported an input/output error: check it (dmesg)"),
                        (getattr(errno, "EDQUOT", errno.ENOSPC), "free space in your disk quota"
                         if hasattr(errno, "EDQUOT") else "free space on its disk"),
                        (errno.EROFS, "make it writable to you (a read-only mount?)")):
        def fail(path, *a, number=number, **k):
            if os.path.basename(path) == _files.LOCK_NAME:
                raise OSError(number, os.strerror(number))
            return real_open(path, *a, **k)

        monkeypatch.setattr(os, "open", fail)
        with pytest.raises(OSError) as info:
            with _files.directory_lock(tmp_path):
                pass
        assert info.value.errno == number
        assert str(info.value) == f"cannot write into {tmp_path} ({os.strerror(number)}): {fix}, or train into another --out"


def test_evaluate_scores_a_trainer_fit_run_and_says_its_split_is_unrecorded(tmp_path, capsys):
    """A checkpoint of Trainer(..., config={"constructor": ..., "kwargs": ...}).fit, which load_model
    and `gpuconv predict` read: `gpuconv evaluate` scored it and then failed naming 'model' (the
    key `gpuconv train` adds to the config); it names the constructor, and on data without
    test_batch it does not call data_batch_5 held out, which the checkpoint does not say."""
    import gpuconv
    from gpuconv.data import DeviceLoader, load_cifar10, train_val_split
    from gpuconv.optim import SGD
    from gpuconv.trainer import Trainer, evaluate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the subset has no test_batch)
        cifar = load_cifar10(SUBSET)
    train, val = train_val_split(cifar.train, val_batch=5)
    net = gpuconv.models.seed_net(seed=0)
    trainer = Trainer(net, SGD(net.parameters(), lr=0.01), out_dir=tmp_path, progress=False,
                      config={"constructor": "seed_net", "kwargs": {}})
    trainer.fit(DeviceLoader(train.images[:128], train.labels[:128], 64), 1)
    rc, out, err = run(["evaluate", "--checkpoint", tmp_path / "checkpoint.npz", "--data", SUBSET], capsys)
    assert rc == 0, err
    assert "seed_net after 1 epoch(s), on data_batch_5 (1017 images) (held out or not: the run did not record it)" in out
    assert "does not record which training images it held out: evaluating on data_batch_5 (1017 images)" in err
    rc, out, err = run(["evaluate", "--checkpoint", tmp_path / "checkpoint.npz", "--data", SUBSET, "--json"], capsys)
    assert rc == 0, err
    said = json.loads(out)
    assert said["model"] == "seed_net" and said["held_out"] is None and said["split_name"] == "data_batch_5"
    model = gpuconv.load_model(tmp_path / "checkpoint.npz")
    expect = evaluate(model.net, DeviceLoader(val.images, val.labels, 500, shuffle=False, mean=model.mean,
                                              std=model.std))
    assert said["accuracy"] == expect["accuracy"] and said["n"] == len(val) == 1017


@pytest.mark.parametrize("flag", ["--resume", "--resume-if-exists"])
def test_resuming_a_trainer_fit_run_is_refused_before_the_data_loads(tmp_path, capsys, monkeypatch, flag):
    """`gpuconv train --out DIR --resume` on a Trainer.fit run's checkpoint (notebook 02's, say): it
    loaded, or downloaded, CIFAR-10, built the default three_layer recipe and failed inside the
    resume (a missing schedule state, the other network's missing keys); it is refused first, with
    the way on."""
    import gpuconv
    from gpuconv.data import DeviceLoader
    from gpuconv.optim import SGD
    from gpuconv.trainer import Trainer
    rng = np.random.default_rng(0)
    net = gpuconv.models.seed_net(seed=0)
    Trainer(net, SGD(net.parameters(), lr=0.01), out_dir=tmp_path, progress=False).fit(
        DeviceLoader(rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 16), 8), 1)
    before = sorted(p.name for p in tmp_path.iterdir())

    def no_data(*args, **kwargs):
        raise AssertionError("the data set was loaded")

    monkeypatch.setattr(cli, "_load_data", no_data)
    rc, _, err = run(["train", "--out", tmp_path, flag, "--no-progress", "--device", "cpu"], capsys)
    assert rc == 1, err
    assert (f"--resume: {tmp_path / 'checkpoint.npz'} was not written by `gpuconv train` but by Trainer.fit in Python"
            in err and "trainer.fit(loader, epochs, resume=True)" in err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # the run's files as they were


def test_evaluate_names_the_recipe_where_it_is_not_the_networks_name(trained, tmp_path, capsys):
    """airbench94_muon trains the airbench94 network: `gpuconv evaluate` of such a run called it
    "airbench94", as if the other recipe had trained it. It names the recipe beside the network
    (and in --json) where the two differ; a run whose recipe is its network's name reads as before.
    The recipe is set in a copy of the shared run's checkpoint."""
    arrays = dict(ckpt.load_checkpoint(trained / "checkpoint.npz"))
    config = ckpt.read_config(arrays)
    rc, out, err = run(["evaluate", "--checkpoint", trained / "checkpoint.npz", "--data", SUBSET], capsys)
    assert rc == 0 and out.startswith("seed after 3 epoch(s)"), (out, err)
    config["train_args"]["recipe"] = "seed_sgd"  # (any recipe name other than the network's)
    arrays["meta/config"] = ckpt.pack_json(config)
    ckpt.save_checkpoint(tmp_path / "checkpoint.npz", arrays)
    rc, out, err = run(["evaluate", "--checkpoint", tmp_path / "checkpoint.npz", "--data", SUBSET], capsys)
    assert rc == 0 and out.startswith("seed (recipe seed_sgd) after 3 epoch(s)"), (out, err)
    rc, out, err = run(["evaluate", "--checkpoint", tmp_path / "checkpoint.npz", "--data", SUBSET, "--json"], capsys)
    said = json.loads(out)
    assert rc == 0 and said["model"] == "seed" and said["recipe"] == "seed_sgd"


def test_evaluate_normalizes_as_the_run_recorded_and_refuses_other_images(trained, tmp_path, capsys):
    """A Trainer.fit run records its own normalization and image size: `gpuconv evaluate` scored it
    with CIFAR-10's mean and std (not what load_model predicts with), and a network of 1x28x28
    images failed inside its first layer on CIFAR-10's."""
    import gpuconv
    from gpuconv.data import DeviceLoader
    from gpuconv.trainer import evaluate
    arrays = ckpt.load_checkpoint(trained / "checkpoint.npz")
    config = ckpt.read_config(arrays)
    config["preprocess"] = {"mean": [100.0, 110.0, 90.0], "std": [50.0, 55.0, 60.0]}
    arrays["meta/config"] = ckpt.pack_json(config)
    own = ckpt.save_checkpoint(tmp_path / "own.npz", arrays)
    rc, out, err = run(["evaluate", "--checkpoint", own, "--data", SUBSET, "--json"], capsys)
    assert rc == 0, err
    _, val, _, _ = cli.resolve_split(cli._load_data(SUBSET), config["train_args"]["val_split"], seed=0)
    model = gpuconv.load_model(own)
    expect = evaluate(model.net, DeviceLoader(val.images, val.labels, 500, shuffle=False, mean=model.mean,
                                              std=model.std))
    assert json.loads(out)["loss"] == pytest.approx(expect["loss"], rel=1e-6)
    config["kwargs"] = {"input_dim": [1, 28, 28]}
    config["preprocess"] = {"mean": [33.0], "std": [78.0]}
    arrays = {k: v for k, v in arrays.items() if not k.startswith("model/")}
    arrays.update({f"model/{k}": v for k, v in gpuconv.models.seed_net(input_dim=(1, 28, 28)).state_dict().items()})
    arrays["meta/config"] = ckpt.pack_json(config)
    gray = ckpt.save_checkpoint(tmp_path / "gray.npz", arrays)
    rc, _, err = run(["evaluate", "--checkpoint", gray, "--data", SUBSET], capsys)
    assert rc == 1 and "its network takes 1x28x28 images, and gpuconv evaluate scores CIFAR-10's 3x32x32" in err

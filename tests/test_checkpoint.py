"""Checkpoint files: flat keys, no pickle, exact round trips, atomic writes, clear load errors."""
from __future__ import annotations

import json
import math
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

from gpuconv import checkpoint as ckpt


def _meta():
    return {"meta/format": np.asarray(ckpt.FORMAT, np.int64), "meta/epoch": np.asarray(3, np.int64)}


def test_pack_json_round_trip_keeps_big_ints_and_floats_exactly():
    obj = {"a": [1, 2**100, -3], "f": 0.1 + 0.2, "s": "x", "n": None, "nan": math.inf}
    arr = ckpt.pack_json(obj)
    assert arr.dtype == np.uint8 and arr.ndim == 1
    assert ckpt.unpack_json(arr) == obj


def test_flatten_tree_round_trip_restores_types_and_values():
    state = {"optimizer": "SGD", "lr": 0.1 + 0.2, "num_params": 2, "nesterov": True, "none": None,
             "state.0.momentum_buffer": np.arange(6, dtype=np.float32).reshape(2, 3),
             "nested": {"t": (1, 2.5), "l": [np.float32(1.5), np.int64(7)], 3: "int key"},
             "huge": 2**70}
    flat = ckpt.flatten_tree("optim", state)
    assert all(k.startswith("optim/") for k in flat)
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in flat.values())
    # Numbers are readable with NumPy alone, as 0-d arrays under their own key.
    assert flat["optim/lr"].dtype == np.float64 and float(flat["optim/lr"]) == 0.1 + 0.2
    assert flat["optim/num_params"].dtype == np.int64
    back = ckpt.unflatten_tree("optim", flat)
    assert back["lr"] == 0.1 + 0.2 and type(back["num_params"]) is int and back["nesterov"] is True
    assert back["none"] is None and back["optimizer"] == "SGD" and back["huge"] == 2**70
    np.testing.assert_array_equal(back["state.0.momentum_buffer"], state["state.0.momentum_buffer"])
    assert back["state.0.momentum_buffer"].dtype == np.float32
    assert back["nested"]["t"] == (1, 2.5) and isinstance(back["nested"]["t"], tuple)
    assert back["nested"]["l"][0] == np.float32(1.5) and back["nested"]["l"][0].dtype == np.float32
    assert back["nested"][3] == "int key"


def test_flatten_tree_keys_never_collide():
    flat = ckpt.flatten_tree("x", {"a/b": 1.0, "a": {"b": 2.0}})
    back = ckpt.unflatten_tree("x", flat)
    assert back == {"a/b": 1.0, "a": {"b": 2.0}}


def test_flatten_tree_rejects_what_would_need_pickle():
    with pytest.raises(TypeError, match="pickle"):
        ckpt.flatten_tree("optim", {"fn": object()})
    with pytest.raises(TypeError, match="object array"):
        ckpt.flatten_tree("optim", {"a": np.array([{}, None], dtype=object)})


def test_rng_state_round_trip_continues_the_same_stream():
    g = np.random.default_rng(123)
    g.random(17)
    saved = ckpt.rng_state(g)
    assert saved.dtype == np.uint8
    expected = g.random(5)
    other = np.random.default_rng(999)
    ckpt.set_rng_state(other, saved)
    np.testing.assert_array_equal(other.random(5), expected)


def test_rng_state_round_trip_for_a_bit_generator_with_array_state():
    g = np.random.Generator(np.random.MT19937(5))
    g.random(3)
    saved = ckpt.rng_state(g)
    expected = g.integers(0, 1000, 8)
    other = np.random.Generator(np.random.MT19937(0))
    ckpt.set_rng_state(other, saved)
    np.testing.assert_array_equal(other.integers(0, 1000, 8), expected)


def test_rng_state_of_another_bit_generator_is_refused():
    saved = ckpt.rng_state(np.random.Generator(np.random.MT19937(1)))
    with pytest.raises(ValueError, match="MT19937"):
        ckpt.set_rng_state(np.random.default_rng(0), saved)


def test_save_then_load_with_numpy_alone(tmp_path):
    arrays = dict(_meta(), **{"model/0.weight": np.ones((2, 3), np.float32), "meta/config": ckpt.pack_json({"m": 1})})
    path = ckpt.save_checkpoint(tmp_path / "sub" / "checkpoint.npz", arrays)
    with np.load(path, allow_pickle=False) as z:  # what any NumPy user can do
        assert set(z.files) == set(arrays)
        np.testing.assert_array_equal(z["model/0.weight"], arrays["model/0.weight"])
    loaded = ckpt.load_checkpoint(tmp_path / "sub")  # a directory means DIR/checkpoint.npz
    assert ckpt.read_config(loaded) == {"m": 1}
    assert ckpt.section(loaded, "model") == {"0.weight": loaded["model/0.weight"]}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["checkpoint.npz"]  # no temp file left


def test_save_refuses_object_arrays(tmp_path):
    with pytest.raises(TypeError, match="never pickle"):
        ckpt.save_checkpoint(tmp_path / "c.npz", {"bad": np.array([None], dtype=object)})
    assert not list(tmp_path.iterdir())


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    ckpt.save_checkpoint(path, dict(_meta(), **{"model/w": np.zeros(3)}))
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK partial")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, dict(_meta(), **{"model/w": np.ones(3)}))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


def test_write_goes_through_fsync_and_replace(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    ckpt.save_checkpoint(tmp_path / "c.npz", _meta())
    assert calls[:2] == ["fsync", "replace"] and calls[-1] == "fsync"  # file, rename, then the directory


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX file modes")
def test_checkpoint_gets_the_mode_of_a_normal_file_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = ckpt.save_checkpoint(tmp_path / "checkpoint.npz", _meta())
        assert path.stat().st_mode & 0o777 == 0o644  # what np.savez(path) would have created
        path.chmod(0o640)
        ckpt.save_checkpoint(path, _meta())  # a rewrite keeps the mode the user chose
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_load_errors_say_what_and_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="gpuconv train --out"):
        ckpt.load_checkpoint(tmp_path / "missing.npz")
    good = ckpt.save_checkpoint(tmp_path / "good.npz", dict(_meta(), **{"model/w": np.arange(1000.0)}))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated"):
        ckpt.load_checkpoint(cut)
    other = tmp_path / "other.npz"
    np.savez(other, w=np.zeros(2))
    with pytest.raises(ValueError, match="not a gpuconv checkpoint"):
        ckpt.load_checkpoint(other)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{"meta/format": np.asarray(1), "evil": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(ValueError, match="pickle"):
        ckpt.load_checkpoint(pickled)
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=r"is not an \.npz archive \(it starts with") as info:
        ckpt.load_checkpoint(noise)
    assert "pickle" not in str(info.value)  # random bytes are not "pickled objects"
    raw_pickle = tmp_path / "raw.npz"
    raw_pickle.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(ValueError, match="is a pickle, which is never loaded"):
        ckpt.load_checkpoint(raw_pickle)
    newer = ckpt.save_checkpoint(tmp_path / "newer.npz", {"meta/format": np.asarray(ckpt.FORMAT + 1)})
    with pytest.raises(ValueError, match="upgrade gpuconv"):
        ckpt.load_checkpoint(newer)


def test_an_archive_that_would_unpack_far_past_its_size_is_refused_unread(tmp_path, monkeypatch):
    """A compressed archive of zeros inflates ~1000x (a "zip bomb" sized to the machine's memory):
    refused from the zip directory alone, before a byte is unpacked; a compressed archive of real
    weights (a few percent smaller) loads. The floor is lowered so the test stays small."""
    monkeypatch.setattr(ckpt, "_EXPANSION_FLOOR", 1 << 20)
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, **dict(_meta(), **{"model/w": np.zeros(1 << 21, np.float32)}))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("the archive was opened for reading"))
    with pytest.raises(ValueError, match=r"would unpack [\d,]+ bytes into 8,3[\d,]+ \(\d+x\): not loaded"):
        ckpt.load_checkpoint(bomb)
    monkeypatch.undo()
    monkeypatch.setattr(ckpt, "_EXPANSION_FLOOR", 1 << 20)
    weights = tmp_path / "weights.npz"
    w = np.random.default_rng(0).standard_normal(1 << 21).astype(np.float32)
    np.savez_compressed(weights, **dict(_meta(), **{"model/w": w}))
    assert np.array_equal(ckpt.load_checkpoint(weights)["model/w"], w)


def test_checkpoint_is_a_plain_zip_of_npy_files(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "c.npz", dict(_meta(), **{"sched/__tree__": ckpt.pack_json({"v": 1})}))
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == sorted(["meta/format.npy", "meta/epoch.npy", "sched/__tree__.npy"])
    assert json.loads(np.load(path)["sched/__tree__"].tobytes()) == {"v": 1}


def test_the_directories_a_checkpoint_or_a_run_makes_are_on_disk_before_it_is(tmp_path, monkeypatch):
    """A checkpoint saved into directories it makes (or a run's --out, made with its lock): the
    directories holding each new one are fsynced, so a power cut cannot take the run directory
    away with the fsynced checkpoint inside it."""
    from gpuconv import _files
    synced, real = [], _files.fsync_dir
    monkeypatch.setattr(_files, "fsync_dir", lambda d: (synced.append(pathlib.Path(d)), real(d))[1])
    ckpt.save_checkpoint(tmp_path / "a" / "b" / "checkpoint.npz", _meta())
    assert synced == [tmp_path / "a", tmp_path, tmp_path / "a" / "b"]  # then the checkpoint's own rename
    synced.clear()
    with _files.directory_lock(tmp_path / "run" / "x"):
        pass
    assert synced == [tmp_path / "run", tmp_path]

"""Checkpoints: round trips, bit-identical resume, atomic writes, clear errors for bad or mismatched files."""
import math
import os
import signal

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network import rng
from mpiprop.network.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint


def make_model(seed, width=16, classes=3):
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Dropout(0.3), nn.Linear(width, classes))


def make_optimizer(name, model):
    if name == "sgd":
        return nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    return nn.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-3)


def batches(count=10, size=8):
    generator = numpy.random.default_rng(42)
    return [(generator.normal(size=(size, 6)).astype(numpy.float32), generator.integers(0, 3, size))
            for _ in range(count)]


def train(model, optimizer, data):
    loss_fn = nn.CrossEntropyLoss()
    for x, y in data:
        optimizer.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        optimizer.step()


def weights(model):
    return {name: p.data.copy() for name, p in model.named_parameters()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert numpy.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path, optimizer_name):
    data = batches()
    model = make_model(0)
    optimizer = make_optimizer(optimizer_name, model)
    train(model, optimizer, data)
    uninterrupted = weights(model)

    model = make_model(0)
    optimizer = make_optimizer(optimizer_name, model)
    train(model, optimizer, data[:4])
    save_checkpoint(tmp_path / "run.ckpt", model, optimizer, steps=4)
    fresh_model = make_model(123)
    fresh_optimizer = make_optimizer(optimizer_name, fresh_model)
    meta = load_checkpoint(tmp_path / "run.ckpt", fresh_model, fresh_optimizer)
    assert meta == {"steps": 4}
    train(fresh_model, fresh_optimizer, data[meta["steps"]:])
    assert_same_weights(weights(fresh_model), uninterrupted)


def test_checkpoint_is_written_to_exactly_the_path_and_restores_rng(tmp_path):
    model = make_model(1)
    save_checkpoint(tmp_path / "model.ckpt", model)
    assert os.listdir(tmp_path) == ["model.ckpt"]
    expected_draw = rng.generator().random()
    rng.generator().random(size=5)
    load_checkpoint(tmp_path / "model.ckpt", make_model(2))
    assert rng.generator().random() == expected_draw


def test_meta_values_round_trip(tmp_path):
    meta = {"epoch": 3, "name": "run é", "ratio": 0.1, "best": math.inf, "none": None, "flag": True,
            "big": 2**100, "pair": (1, "a"), "nested": {"list": [1.5, {"deep": numpy.arange(3)}]},
            "scalar": numpy.float32(2.5), "matrix": numpy.eye(2, dtype=numpy.float64)}
    save_checkpoint(tmp_path / "c", make_model(0), **meta)
    loaded = load_checkpoint(tmp_path / "c", make_model(0))
    assert loaded["pair"] == (1, "a") and isinstance(loaded["pair"], tuple)
    assert loaded["scalar"] == numpy.float32(2.5) and loaded["scalar"].dtype == numpy.float32
    numpy.testing.assert_array_equal(loaded["nested"]["list"][1]["deep"], numpy.arange(3))
    numpy.testing.assert_array_equal(loaded["matrix"], numpy.eye(2))
    for key in ("epoch", "name", "ratio", "best", "none", "flag", "big"):
        assert loaded[key] == meta[key]


def test_unstorable_meta_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="meta/thing"):
        save_checkpoint(tmp_path / "c", make_model(0), thing=object())
    assert os.listdir(tmp_path) == []


def test_failure_during_write_keeps_the_old_checkpoint_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    old_model = make_model(0)
    save_checkpoint(path, old_model, version="old")

    def savez_that_fails_halfway(stream, **arrays):
        stream.write(b"PK\x03\x04 half of an archive")
        raise OSError("No space left on device")

    monkeypatch.setattr(numpy, "savez", savez_that_fails_halfway)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, make_model(7), version="new")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["run.ckpt"]
    restored = make_model(9)
    assert load_checkpoint(path, restored) == {"version": "old"}
    assert_same_weights(weights(restored), weights(old_model))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="killing a writer mid-write is simulated with os.fork")
def test_process_killed_during_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    old_model = make_model(0)
    save_checkpoint(path, old_model, version="old")

    def savez_then_killed(stream, **arrays):
        stream.write(b"PK\x03\x04 half of an archive")
        stream.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(numpy, "savez", savez_then_killed)
    child = os.fork()
    if child == 0:
        try:
            save_checkpoint(path, make_model(7), version="new")
        finally:
            os._exit(1)  # reached only if the kill did not happen
    _, status = os.waitpid(child, 0)
    monkeypatch.undo()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    restored = make_model(9)
    assert load_checkpoint(path, restored) == {"version": "old"}
    assert_same_weights(weights(restored), weights(old_model))


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, make_model(0), nn.optim.SGD(make_model(0).parameters(), lr=0.1))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) * 2 // 3])
    with pytest.raises(CheckpointError, match=f"{path}.*truncated or corrupt"):
        load_checkpoint(path, make_model(0))


def test_corrupted_bytes_are_detected(tmp_path):
    path = tmp_path / "run.ckpt"
    model = make_model(0)
    save_checkpoint(path, model)
    content = bytearray(path.read_bytes())
    offset = bytes(content).find(model[0].weight.data.tobytes())
    assert offset > 0
    content[offset + 10] ^= 0xFF
    path.write_bytes(bytes(content))
    with pytest.raises(CheckpointError, match=f"{path}.*truncated or corrupt"):
        load_checkpoint(path, make_model(0))


def test_other_architecture_is_named_and_nothing_is_changed(tmp_path):
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, make_model(0, classes=3))
    other = make_model(1, classes=4)
    before = weights(other)
    with pytest.raises(CheckpointError, match=rf"{path}.*'3.weight' is \(16, 3\) in the file but \(16, 4\) in the model"):
        load_checkpoint(path, other)
    assert_same_weights(weights(other), before)
    deeper = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3), nn.ReLU(), nn.Linear(3, 3))
    with pytest.raises(CheckpointError, match=r"missing from the file: \['5.bias', '5.weight'\]"):
        load_checkpoint(path, deeper)


def test_other_optimizer_is_named_and_the_model_is_unchanged(tmp_path):
    path = tmp_path / "run.ckpt"
    saved = make_model(0)
    save_checkpoint(path, saved, make_optimizer("sgd", saved))
    model = make_model(1)
    before = weights(model)
    with pytest.raises(CheckpointError, match=f"{path}.*saved by SGD but this is Adam"):
        load_checkpoint(path, model, make_optimizer("adam", model))
    assert_same_weights(weights(model), before)
    save_checkpoint(path, saved)
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        load_checkpoint(path, model, make_optimizer("sgd", model))


def test_files_that_are_not_checkpoints(tmp_path):
    numpy.savez(tmp_path / "plain.npz", x=numpy.ones(3))
    with pytest.raises(CheckpointError, match="plain.npz is not an mpiprop-checkpoint"):
        read_checkpoint(tmp_path / "plain.npz")
    (tmp_path / "text").write_text("hello")
    with pytest.raises(CheckpointError, match="text is truncated or corrupt"):
        read_checkpoint(tmp_path / "text")
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        read_checkpoint(tmp_path / "absent.ckpt")


def test_checkpoint_holds_no_pickled_objects(tmp_path):
    path = tmp_path / "run.ckpt"
    model = make_model(0)
    optimizer = make_optimizer("adam", model)
    train(model, optimizer, batches(2))
    save_checkpoint(path, model, optimizer)
    with numpy.load(path, allow_pickle=False) as archive:
        assert all(archive[name].dtype != object for name in archive.files)
        assert "model/0.weight" in archive.files and "optimizer/state/0.weight/exp_avg" in archive.files


def test_member_flagged_as_encrypted_is_a_checkpoint_error(tmp_path):
    import zipfile

    from test_datasets import set_member_flags

    path = tmp_path / "run.npz"
    save_checkpoint(path, nn.Sequential(nn.Linear(3, 2)))
    with zipfile.ZipFile(path) as archive:
        first_member = archive.namelist()[0]
    set_member_flags(path, first_member, 0x1)
    with pytest.raises(CheckpointError, match="is truncated or corrupt"):
        read_checkpoint(path)


def test_damaged_array_header_is_a_checkpoint_error(tmp_path):
    from test_datasets import damage_npy_headers

    path = tmp_path / "run.npz"
    save_checkpoint(path, nn.Sequential(nn.Linear(3, 2)))
    damage_npy_headers(path)
    with pytest.raises(CheckpointError, match="is truncated or corrupt"):
        read_checkpoint(path)

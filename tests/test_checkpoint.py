"""Checkpoints: round trips, bit-identical resume, atomic writes, clear errors for bad or mismatched files."""
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import zlib

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network.compute import rng
from mpiprop.network.training.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint


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
    stray = [name for name in os.listdir(tmp_path) if name != "run.ckpt"]
    assert len(stray) == 1 and stray[0].startswith(".run.ckpt.") and stray[0].endswith(".tmp"), stray
    (tmp_path / "unrelated.tmp").write_text("not ours")
    save_checkpoint(path, old_model, version="next")
    assert sorted(os.listdir(tmp_path)) == ["run.ckpt", "unrelated.tmp"]  # the next write removed the stray one


@pytest.mark.parametrize("umask", [0o077, 0o027, 0o002])
def test_checkpoint_files_respect_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "run.ckpt", make_model(0))
    finally:
        os.umask(previous)
    assert (tmp_path / "run.ckpt").stat().st_mode & 0o777 == 0o666 & ~umask


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


# --- hostile files: every header is checked before anything is decompressed or allocated ------------------
MEMORY_LIMIT_BYTES = 768 * 2**20  # address space beyond the interpreter's, numpy's and hypothesis's own
ZEROS_BLOCK = bytes(2**20)


def npy_header(shape, dtype="<f4", fortran=False):
    """The bytes of a version 1.0 .npy header (magic, length, dict) promising `shape` of `dtype`."""
    text = repr({"descr": dtype, "fortran_order": fortran, "shape": tuple(shape)})
    text += " " * (63 - (len(text) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()


def deflated_zeros(count_mb):
    """A raw deflate stream of `count_mb` MiB of zeros, built without compressing them all (about 1 KiB each)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(ZEROS_BLOCK) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(ZEROS_BLOCK) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first + repeated * (count_mb - 1) + compressor.flush()


def zip_archive(members):
    """The bytes of a zip file of `members`: (name, method, stored bytes, uncompressed size, crc) each.

    Written by hand so that sizes and contents can disagree, as in a hostile file.
    """
    body, directory = b"", b""
    for name, method, data, size, crc in members:
        encoded = name.encode()
        fields = struct.pack("<HHHHHIII", 20, 0, method, 0, 0, crc, len(data), size)
        directory += (b"PK\x01\x02" + struct.pack("<H", 20) + fields
                      + struct.pack("<HHHHHII", len(encoded), 0, 0, 0, 0, 0, len(body)) + encoded)
        body += b"PK\x03\x04" + fields + struct.pack("<HH", len(encoded), 0) + encoded + data
    end = struct.pack("<HHHHIIH", 0, 0, len(members), len(members), len(directory), len(body), 0)
    return body + directory + b"PK\x05\x06" + end


def header_member(header_json):
    text = numpy.array(header_json)
    data = npy_header((), text.dtype.str) + text.tobytes()
    return ("__checkpoint__.npy", 0, data, len(data), zlib.crc32(data))


def valid_header(**arrays):
    return json.dumps({"format": "mpiprop-checkpoint", "version": 1, "model": {name: {"__array__": f"model/{name}"}
                       for name in arrays}, "optimizer": None, "rng": None, "meta": {}})


def test_a_deflated_member_that_inflates_to_gigabytes_is_refused_before_it_is_inflated(tmp_path):
    """1.5 MB on disk promising 1.5 GB of float32 weights (a plausible header): refused in bounded memory."""
    path = tmp_path / "bomb.npz"
    shape = (1536, 2**18)
    data = deflated_zeros(1536)
    header = npy_header(shape)
    stream = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = stream.compress(header) + stream.flush(zlib.Z_FULL_FLUSH) + data
    path.write_bytes(zip_archive([header_member(valid_header(weight=None)),
                                  ("model/weight.npy", 8, payload, len(header) + 1536 * 2**20, 0)]))
    assert path.stat().st_size < 2 * 2**20
    check_within_memory_limit(f"read_checkpoint({str(path)!r})",
                              rf"checkpoint {path} is refused: its arrays would take \d+ bytes, more than")


def test_a_header_claiming_terabytes_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "huge.npz"
    header = npy_header((2**40,), "<f4")
    path.write_bytes(zip_archive([header_member(valid_header(weight=None)),
                                  ("model/weight.npy", 0, header, len(header), zlib.crc32(header))]))
    refusal = (rf"checkpoint {path} is refused: member 'model/weight.npy' claims shape \(1099511627776,\) of "
               r"float32 \(4398046511104 bytes\) but holds 0 bytes of data")
    check_within_memory_limit(f"read_checkpoint({str(path)!r})", refusal)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is refused"):
        read_checkpoint(path)


def test_a_header_shaped_unlike_the_model_is_refused_before_reading(tmp_path):
    path = tmp_path / "other.npz"
    save_checkpoint(path, nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(CheckpointError, match=rf"{path} was saved from a different architecture: '0.weight' is "
                                              r"\(3, 2\) in the file but \(300, 2\) in the model"):
        read_checkpoint(path, nn.Sequential(nn.Linear(300, 2)))


def test_a_deeply_nested_header_is_a_checkpoint_error_naming_the_file(tmp_path):
    path = tmp_path / "deep.npz"
    path.write_bytes(zip_archive([header_member("[" * 900 + "]" * 900)]))
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is"):
        read_checkpoint(path)
    deep_meta = json.loads(valid_header())
    deep_meta["meta"] = json.loads('{"a":' * 900 + "1" + "}" * 900)
    path.write_bytes(zip_archive([header_member(json.dumps(deep_meta))]))
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is corrupt: its header is nested too deeply"):
        read_checkpoint(path)


def check_within_memory_limit(call, error_pattern):
    """Run `call` (on read_checkpoint) in a Python limited to MEMORY_LIMIT_BYTES more address space: it must
    raise CheckpointError matching `error_pattern`, neither MemoryError nor anything else."""
    program = MEMORY_LIMITED_PREAMBLE + textwrap.dedent(f"""
        try:
            {call}
        except CheckpointError as error:
            print("CheckpointError:", error)
        """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                            cwd=os.path.dirname(__file__))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search("CheckpointError: " + error_pattern, result.stdout), result.stdout + result.stderr


MEMORY_LIMITED_PREAMBLE = textwrap.dedent(f"""
    import resource
    import numpy, hypothesis, json, zlib
    from mpiprop.network.training.checkpoint import CheckpointError, read_checkpoint
    def address_space_in_use():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * resource.getpagesize()
    limit = address_space_in_use() + {MEMORY_LIMIT_BYTES}
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    """)


HOSTILE_EXAMPLES = 150


def test_no_file_makes_the_reader_fail_otherwise_than_with_checkpoint_error_or_pass_a_memory_limit():
    """Property (hypothesis), run in a process with a hard address-space limit (RLIMIT_AS) that no input may reach."""
    pytest.importorskip("hypothesis")
    program = MEMORY_LIMITED_PREAMBLE + "import test_checkpoint\ntest_checkpoint.reader_property()\nprint('ok')\n"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600,
                            cwd=os.path.dirname(__file__))
    assert result.returncode == 0 and result.stdout.endswith("ok\n"), result.stdout + result.stderr


def reader_property():
    """Read many hostile archives with and without a model: each read returns, or raises CheckpointError."""
    from hypothesis import HealthCheck, given, settings

    model = nn.Sequential(nn.Linear(3, 2))

    @settings(max_examples=HOSTILE_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(hostile_archives())
    def read_is_refused_or_returns(content):
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "hostile.npz")
            with open(path, "wb") as stream:
                stream.write(content)
            for reader_model in (None, model):
                try:
                    read_checkpoint(path, reader_model)
                except CheckpointError as error:
                    assert path in str(error), error

    read_is_refused_or_returns()


def hostile_archives():
    from hypothesis import strategies as st

    dtypes = st.sampled_from(["<f4", "<f8", ">f8", "|b1", "<U7", "|O", "|V8", "<i8", "<c16", "<f2", "<M8[s]"])
    headers = st.one_of(st.just(valid_header(weight=None)), st.just(valid_header()),
                        st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth),
                        st.integers(1, 3000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
                        st.text(max_size=200))

    @st.composite
    def member(draw):
        name = draw(st.sampled_from(["model/weight.npy", "model/0.weight.npy", "optimizer/x.npy", "__checkpoint__.npy",
                                     "other"]))
        shape = tuple(draw(st.lists(st.integers(-2, 2**40), max_size=3)))
        header = npy_header(shape, draw(dtypes), draw(st.booleans()))
        if draw(st.booleans()):
            compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
            inflated_mb = draw(st.integers(1, 200))
            payload = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH) + deflated_zeros(inflated_mb)
            method, true_size = 8, len(header) + inflated_mb * 2**20
        else:
            payload = header + bytes(draw(st.integers(0, 4096)))
            method, true_size = draw(st.sampled_from([0, 0, 12, 99])), len(payload)
        size = draw(st.one_of(st.just(true_size), st.integers(0, 2**32 - 1)))
        return name, method, payload, size, draw(st.integers(0, 2**32 - 1))

    @st.composite
    def archive(draw):
        members = [header_member(draw(headers))] + draw(st.lists(member(), max_size=3))
        content = bytearray(zip_archive(members))
        for position, value in draw(st.lists(st.tuples(st.integers(0, len(content) - 1), st.integers(0, 255)),
                                             max_size=4)):
            content[position] = value
        return bytes(content[:draw(st.integers(0, len(content)))]) if draw(st.booleans()) else bytes(content)

    return archive()

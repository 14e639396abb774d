"""Pipeline in one process (one rank, messages to itself when interleaved): exactness, API and errors."""
import numpy
import pytest

import mpiprop.network as nn
from mpiprop.distributed.pipeline.pipeline import Pipeline
from mpiprop.distributed.pipeline.stage_links import decode_header, encode_header
from mpiprop.distributed.data_parallel.gradient_sync import GradientSync
from mpiprop.distributed.pipeline.topology import make_grid

SCHEDULES = [("gpipe", 1), ("1f1b", 1), ("zb-h1", 1), ("interleaved", 3)]


def make_model():
    nn.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def batch(rows=10):
    generator = numpy.random.default_rng(2)
    return generator.standard_normal((rows, 5)).astype(numpy.float32), generator.integers(0, 3, rows)


def reference_gradients(x, y):
    model, loss_fn = make_model(), nn.CrossEntropyLoss()
    loss = loss_fn(model(x), y)
    model.backward(loss_fn.backward(), input_grad=False)
    return loss, {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("schedule,chunks", SCHEDULES)
def test_uneven_micro_batches_give_the_whole_batch_loss_and_gradients(schedule, chunks):
    x, y = batch(10)  # 4 micro-batches of 3, 3, 2, 2 rows
    expected_loss, expected = reference_gradients(x, y)
    pipe = Pipeline(make_model(), 4, schedule, virtual_stages=chunks)
    loss = pipe.train_step(x, y, nn.CrossEntropyLoss())
    assert loss == pytest.approx(expected_loss, abs=1e-6)
    names = [name for name, _ in pipe.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    for name, p in pipe.named_parameters():
        numpy.testing.assert_allclose(p.grad, expected[name], atol=1e-6)


def test_interleaved_chunks_on_one_rank_follow_the_balance():
    pipe = Pipeline(make_model(), 2, "interleaved", balance=[2, 2, 1], virtual_stages=3)
    assert pipe.chunk_ranges == [(0, 2), (2, 4), (4, 5)]
    assert [len(chunk) for chunk in pipe.chunks] == [2, 2, 1]


def test_predict_evaluate_and_consolidated_checkpoint_match_the_plain_model():
    x, y = batch(6)
    model = make_model()
    expected = model.forward(x)[0]
    pipe = Pipeline(make_model(), 3, "1f1b")
    numpy.testing.assert_allclose(pipe.predict(x), expected, atol=1e-6)
    assert pipe.evaluate(x, y, nn.CrossEntropyLoss()) == pytest.approx(nn.CrossEntropyLoss()(expected, y), abs=1e-6)
    for p in pipe.parameters():
        p.data += 1.0
    plain = make_model()
    plain.load_state_dict(pipe.consolidated_state_dict())
    assert all((plain.state_dict()[name] == p.data).all() for name, p in pipe.named_parameters())
    pipe.load_state_dict(model.state_dict())
    numpy.testing.assert_allclose(pipe.predict(x), expected, atol=1e-6)


def test_balance_by_measured_time_covers_the_model():
    x, _ = batch(4)
    pipe = Pipeline(make_model(), 2, "gpipe", balance="time", sample_input=x)
    assert pipe.balance == [5]


def test_statistics_count_the_stash_and_a_bubble_between_zero_and_one():
    x, y = batch(8)
    pipe = Pipeline(make_model(), 4, "gpipe")
    pipe.train_step(x, y, nn.CrossEntropyLoss())
    stats = pipe.gather_stats()[0]
    assert stats.peak_stash == 4
    assert [str(record.step) for record in stats.records] == ["F0", "F1", "F2", "F3", "B0", "B1", "B2", "B3"]
    assert 0.0 <= stats.bubble < 1.0 and stats.total >= stats.busy


def test_construction_errors_state_the_problem():
    with pytest.raises(TypeError, match="splits a network Sequential"):
        Pipeline(nn.Linear(2, 2), 2)
    with pytest.raises(ValueError, match="unknown pipeline schedule 'zigzag'"):
        Pipeline(make_model(), 2, "zigzag")
    with pytest.raises(ValueError, match=r"balance \[2, 2\] has 2 entries but the pipeline has 1 stages"):
        Pipeline(make_model(), 2, balance=[2, 2])
    with pytest.raises(ValueError, match=r"sums to 4 but the model has 5 layers"):
        Pipeline(make_model(), 2, balance=[4])
    with pytest.raises(ValueError, match="unknown balance rule 'flops'"):
        Pipeline(make_model(), 2, balance="flops")
    with pytest.raises(ValueError, match="needs sample_input"):
        Pipeline(make_model(), 2, balance="time")
    with pytest.raises(ValueError, match="cannot cut 5 layers into 6 stages"):
        Pipeline(make_model(), 2, "interleaved", virtual_stages=6)


def test_batch_errors_state_the_sizes():
    x, y = batch(6)
    pipe = Pipeline(make_model(), 4, "1f1b")
    with pytest.raises(ValueError, match="a batch of 3 rows cannot be cut into 4 micro-batches"):
        pipe.train_step(x[:3], y[:3], nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="the input has 6 rows .* but the targets have 5"):
        pipe.train_step(x, y[:5], nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="needs the targets y"):
        pipe.train_step(x, None, nn.CrossEntropyLoss())


def test_activation_headers_round_trip():
    shape, dtype = decode_header(encode_header((3, 4), numpy.float64))
    assert shape == (3, 4) and dtype == numpy.float64
    with pytest.raises(ValueError, match="at most 14 dimensions"):
        encode_header((1,) * 15, numpy.float32)


def test_grid_of_one_rank_and_its_errors():
    grid = make_grid(1)
    assert (grid.stage, grid.replica, grid.stages, grid.replicas) == (0, 0, 1, 1)
    model = make_model()
    sync = GradientSync(list(reversed(model.parameters())), grid.data_comm, bucket_cap_mb=0.0001)
    for p in model.parameters():
        p.grad[...] = 2.0
    sync.reduce_all()
    assert len(sync.buckets) > 1 and all((p.grad == 2.0).all() for p in model.parameters())
    with pytest.raises(ValueError, match="1 ranks cannot form pipelines of 2 stages"):
        make_grid(2)
    with pytest.raises(ValueError, match="1 ranks cannot form pipelines of 2 stages"):
        Pipeline(make_model(), 2, "1f1b", stages=2)


def test_evaluation_takes_a_batch_smaller_than_the_micro_batch_count():
    x, y = batch(6)
    model = make_model()
    pipe = Pipeline(model, 4, "1f1b").eval()
    expected = model.eval().forward(x[:3])[0]
    numpy.testing.assert_allclose(pipe.predict(x[:3]), expected, rtol=1e-6)
    assert pipe.evaluate(x[:3], y[:3], nn.CrossEntropyLoss()) == pytest.approx(nn.CrossEntropyLoss()(expected, y[:3]))

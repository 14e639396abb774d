"""Pipelines under mpiexec train exactly like the same model in one process; each rank prints PIPE-OK lines.

Usage: mpiexec -n N python pipe_equivalence.py --specs gpipe:4,1f1b:2 [--grid-specs 1f1b:2] [--steps 3]

A spec "schedule:m" trains an N-stage pipeline with m micro-batches; a grid spec trains
2-stage pipelines on N/2 replicas (`Pipeline(..., stages=2)`), whose gradients the pipeline
averages across replicas. Every run is
compared with single-process training of the whole batch (parameters and losses within
1e-5), and the executor's peak stash with the schedule's.
"""
import argparse

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import Pipeline
from mpiprop.distributed.pipeline.pipeline_schedules import peak_in_flight

TOLERANCE = 1e-5
ROWS = 10  # per replica; not a multiple of 4, so micro-batches differ in size


def make_model():
    nn.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 5))


def make_batches(steps, rows):
    generator = numpy.random.default_rng(1)
    return [(generator.standard_normal((rows, 6)).astype(numpy.float32), generator.integers(0, 5, rows))
            for _ in range(steps)]


def train_reference(batches):
    model, loss_fn = make_model(), nn.CrossEntropyLoss()
    optimizer = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for x, y in batches:
        optimizer.zero_grad()
        losses.append(loss_fn(model(x), y))
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()
    return model, losses


def largest_difference(pipe, reference):
    expected = dict(reference.named_parameters())
    return max((float(numpy.abs(p.data - expected[name].data).max()) for name, p in pipe.named_parameters()),
               default=0.0)


def check_pipeline(schedule, micro_batches, steps, grid_stages=None):
    pipe = Pipeline(make_model(), micro_batches, schedule, stages=grid_stages, bucket_cap_mb=0.0001)
    replicas = pipe.replicas
    if replicas > 1:
        record_buckets_launched_during_backward(pipe.gradient_sync)
    batches = make_batches(steps, ROWS * replicas)
    reference, reference_losses = train_reference(batches)
    optimizer = nn.optim.SGD(pipe.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for x, y in batches:
        rows = slice(pipe.replica * ROWS, (pipe.replica + 1) * ROWS)
        x, y = x[rows], y[rows]
        optimizer.zero_grad()
        loss = pipe.train_step(x if pipe.is_first else None, y if pipe.is_last else None, nn.CrossEntropyLoss())
        if replicas > 1:
            loss = float(pipe.data_comm.allreduce(numpy.array([loss]))[0]) / replicas
        losses.append(loss)
        optimizer.step()
    parameter_error = largest_difference(pipe, reference)
    loss_error = max(abs(a - b) for a, b in zip(losses, reference_losses))
    assert parameter_error < TOLERANCE and loss_error < TOLERANCE, (schedule, parameter_error, loss_error)
    peak = pipe.last_stats.peak_stash
    assert peak == peak_in_flight(pipe.steps), (peak, pipe.steps)
    check_peak_bound(pipe, peak, micro_batches)
    if replicas == 1:
        check_inference_and_checkpoint(pipe, reference, batches[0])
    else:
        sync = pipe.gradient_sync
        assert sync.allreduce_kind == "shared memory", sync.allreduce_kind
        assert len(sync.buckets) > 1 and sync.launched_during_backward == [len(sync.buckets)] * steps, (
            len(sync.buckets), sync.launched_during_backward)
    where = "" if grid_stages is None else f" grid={pipe.num_stages}x{replicas}"
    print(f"PIPE-OK rank={MPI.COMM_WORLD.rank} schedule={schedule} m={micro_batches}{where} "
          f"param_err={parameter_error:.1e} loss_err={loss_error:.1e} peak_stash={peak}",
          flush=True)


def record_buckets_launched_during_backward(sync):
    """Every bucket's reduction must have started before `finish` (the hook of the chunks' last backward)."""
    sync.launched_during_backward = []
    finish = sync.finish

    def recording_finish():
        sync.launched_during_backward.append(sync.launched_buckets)
        return finish()

    sync.finish = recording_finish


def check_peak_bound(pipe, peak, micro_batches):
    stages = pipe.num_stages
    if pipe.schedule_name == "1f1b":
        assert peak == min(stages - pipe.stage_index, micro_batches) <= stages, peak
    if pipe.schedule_name == "gpipe":
        assert peak == micro_batches, peak


def check_inference_and_checkpoint(pipe, reference, batch):
    x, y = batch
    expected = reference.forward(x)[0]
    predicted = pipe.predict(x if pipe.is_first else None)
    if pipe.is_last:
        assert numpy.abs(predicted - expected).max() < TOLERANCE
    else:
        assert predicted is None
    loss = pipe.evaluate(x if pipe.is_first else None, y if pipe.is_last else None, nn.CrossEntropyLoss())
    assert abs(loss - nn.CrossEntropyLoss()(expected, y)) < TOLERANCE
    state = pipe.consolidated_state_dict()
    if pipe.comm.rank == 0:
        plain = make_model()
        plain.load_state_dict(state)
        assert numpy.abs(plain.forward(x)[0] - expected).max() < TOLERANCE
    else:
        assert state is None


def check_grid_replicas_share_buffers():
    """After each step every replica holds replica 0's BatchNorm statistics, whatever its own batch was."""
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 5))
    pipe = Pipeline(model, 2, "1f1b", stages=2)
    optimizer = nn.optim.SGD(pipe.parameters(), lr=0.1)
    for x, y in make_batches(2, ROWS * pipe.replicas):
        rows = slice(pipe.replica * ROWS, (pipe.replica + 1) * ROWS)
        optimizer.zero_grad()
        pipe.train_step(x[rows] * (1 + pipe.replica), y[rows], nn.CrossEntropyLoss())
        optimizer.step()
        for name, buffer in pipe.named_buffers():
            assert numpy.array_equal(buffer, pipe.data_comm.bcast(buffer.copy(), root=0)), name
    assert sum(pipe.stage_allgather(len(list(pipe.named_buffers())))) >= 2  # running mean and variance
    print(f"PIPE-OK rank={MPI.COMM_WORLD.rank} buffers", flush=True)


def check_errors_reach_every_rank():
    pipe = Pipeline(make_model(), 4, "1f1b")
    x, y = make_batches(1, 3)[0]
    wide_x, wide_y = make_batches(1, 8)[0]
    for inputs, targets, message in [(x, y, "cannot be cut into 4 micro-batches"),
                                     (x, None, "needs the targets y"),
                                     (None, y, "needs the input batch x"),
                                     (wide_x, wide_y[:6], "the input has 8 rows (first stage) but the targets have 6")]:
        try:
            pipe.train_step(inputs if pipe.is_first else None, targets if pipe.is_last else None,
                            nn.CrossEntropyLoss())
        except ValueError as error:
            assert message in str(error), error
        else:
            raise AssertionError(f"no error for {message!r}")
    try:
        Pipeline(make_model(), 4, "1f1b", balance=[3] * MPI.COMM_WORLD.size)
    except ValueError as error:
        assert f"sums to {3 * MPI.COMM_WORLD.size} but the model has 11 layers" in str(error), error
    else:
        raise AssertionError("no error for a bad balance")
    print(f"PIPE-OK rank={MPI.COMM_WORLD.rank} errors", flush=True)


def parse_specs(text):
    return [(name, int(m)) for name, m in (item.split(":") for item in text.split(",") if item)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--specs", default="")
    parser.add_argument("--grid-specs", default="")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--errors", action="store_true")
    args = parser.parse_args()
    for schedule, micro_batches in parse_specs(args.specs):
        check_pipeline(schedule, micro_batches, args.steps)
    for schedule, micro_batches in parse_specs(args.grid_specs):
        check_pipeline(schedule, micro_batches, args.steps, grid_stages=2)
    if args.grid_specs:
        check_grid_replicas_share_buffers()
    if args.errors:
        check_errors_reach_every_rank()


if __name__ == "__main__":
    main()

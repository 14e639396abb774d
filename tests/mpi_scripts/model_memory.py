"""Measure the memory report of an MLP of given widths under one layout, for comparison with `mpiprop model`.

    mpiexec -n 2 python model_memory.py --layout 2x1:zero1 --widths 64,256,256,10 --batch 32 --optimizer adam

Layouts: Dx1 (DataParallel, with :zero1 or :zero2 its sharded optimizer state), 1x1xT (every pair of
Linear layers split column -> row over T ranks), DxP (D replicas of a P-stage 1F1B pipeline), DxPxT
(the same pipeline with each stage split over T ranks). Two
untraced steps come first, then one whose forward and backward PeakMemory traces (under ZeRO-2 on one
node the whole buckets of backward live in shared slots that tracemalloc cannot see: their bytes are
added). Rank 0 prints "MODEL-MEMORY " and a JSON list of every rank's report with its pipeline stage (0 without one).
"""
import argparse
import json

import numpy

import mpiprop.network as nn
from mpiprop import distributed
from mpiprop.distributed import DataParallel, Pipeline
from mpiprop.distributed.tensor_parallel import ColumnParallelLinear, RowParallelLinear, tensor_parallel_group
from mpiprop.launch.memory_model import ModelDescription, layer_units, parse_parallel_layouts, parse_widths, split_role

OPTIMIZERS = {"sgd": (nn.optim.SGD, {"lr": 0.01}), "momentum": (nn.optim.SGD, {"lr": 0.01, "momentum": 0.9}),
              "adam": (nn.optim.Adam, {"lr": 1e-3})}
SPLIT_LAYERS = {"column": ColumnParallelLinear, "row": RowParallelLinear}


def build_mlp(description: ModelDescription, tensor: int) -> nn.Sequential:
    nn.manual_seed(0)
    widths = description.widths
    group = tensor_parallel_group(tensor) if tensor > 1 else None
    elements = []
    for unit in layer_units(description):
        layers = []
        for index in unit:
            linear = nn.Linear(widths[index], widths[index + 1])
            role = split_role(description, index, tensor)
            layers.append(SPLIT_LAYERS[role](linear, group) if role in SPLIT_LAYERS else linear)
            if index < description.linear_count - 1:
                layers.append(nn.ReLU())
        elements += [nn.Recompute(*layers)] if description.recompute else layers
    return nn.Sequential(*elements).to(dtype=numpy.dtype(description.dtype))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layout", required=True)
    parser.add_argument("--widths", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--micro-batches", type=int, default=1)
    parser.add_argument("--recompute", action="store_true")
    args = parser.parse_args()
    layout = parse_parallel_layouts(args.layout)[0]
    description = ModelDescription(parse_widths(args.widths), args.optimizer, args.dtype, args.recompute)
    model = build_mlp(description, layout.tensor)
    optimizer_class, hyperparameters = OPTIMIZERS[args.optimizer]
    rows = args.batch // layout.data
    if layout.stages > 1 or (layout.tensor > 1 and layout.data > 1):
        strategy = Pipeline(model, micro_batches=args.micro_batches, schedule="1f1b", stages=layout.stages)
        optimizer = optimizer_class(strategy.parameters(), **hyperparameters)
    elif layout.data > 1:
        strategy = DataParallel(model, shard_optimizer_state=layout.zero)
        optimizer = strategy.optimizer(optimizer_class, **hyperparameters)
    else:
        strategy = nn.LocalStrategy(model)
        optimizer = optimizer_class(model.parameters(), **hyperparameters)
    data = numpy.random.default_rng(distributed.rank())
    x = data.standard_normal((rows, description.widths[0])).astype(description.dtype)
    y = data.integers(0, description.widths[-1], size=rows)
    loss_fn = nn.CrossEntropyLoss()
    for traced in (False, False, True):
        optimizer.zero_grad()
        with nn.PeakMemory() as peak:
            if traced:
                strategy.train_step(x, y, loss_fn)
        if not traced:
            strategy.train_step(x, y, loss_fn)
        optimizer.step()
    slots = strategy.gradient_sync.slot_bytes if isinstance(strategy, DataParallel) else 0
    report = nn.memory_report(strategy.parameters(), optimizer, peak.bytes + slots)
    reports = distributed.gather_memory_reports(report)
    stages = distributed.Communicator().allgather_object(getattr(strategy, "stage_index", 0))
    if distributed.is_main_rank():
        print("MODEL-MEMORY " + json.dumps([dict(vars(each), stage=stage) for each, stage in zip(reports, stages)]),
              flush=True)


if __name__ == "__main__":
    main()

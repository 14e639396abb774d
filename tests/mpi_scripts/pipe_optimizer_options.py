"""Optimizer and loss options through a pipeline of N stages, against the same training in one process.

Each stage's AdamW has parameter groups (no weight decay and half the learning rate on biases,
amsgrad on the weights), follows a cosine schedule per group and zeroes gradients with
set_to_none=True; the loss smooths its labels. Every rank prints "PIPE-OPTIONS-OK rank=R param_err=..."
and schedule when its stage's parameters match the single-process run within 1e-5.
"""
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import Pipeline
from mpiprop.network.optim.lr_schedules import CosineAnnealingLR, set_lr
from pipe_equivalence import largest_difference, make_batches, make_model

TOLERANCE = 1e-5
STEPS, ROWS, MICRO_BATCHES = 4, 10, 3
SCHEDULES = ("1f1b", "zb-h1")  # zero-bubble runs the weight gradients apart from the input gradients


def make_optimizer(named_parameters):
    named = list(named_parameters)
    return nn.optim.AdamW([{"params": [p for name, p in named if name.endswith("weight")], "amsgrad": True},
                           {"params": [p for name, p in named if name.endswith("bias")], "weight_decay": 0.0,
                            "lr": 0.005}], lr=0.01, weight_decay=0.1)


def train(model, step_fn):
    optimizer = make_optimizer(model.named_parameters())
    schedule = CosineAnnealingLR(0.01, total=STEPS, min_lr=0.001)
    for step, (x, y) in enumerate(make_batches(STEPS, ROWS)):
        optimizer.zero_grad(set_to_none=True)
        step_fn(x, y)
        set_lr(optimizer, schedule, step)
        optimizer.step()


def main():
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    reference = make_model()

    def reference_step(x, y):
        loss_fn(reference(x), y)
        reference.backward(loss_fn.backward(), input_grad=False)

    train(reference, reference_step)
    for schedule in SCHEDULES:
        pipe = Pipeline(make_model(), MICRO_BATCHES, schedule)

        def pipeline_step(x, y):
            pipe.train_step(x if pipe.is_first else None, y if pipe.is_last else None, loss_fn)

        train(pipe, pipeline_step)
        error = largest_difference(pipe, reference)
        assert error < TOLERANCE, (schedule, error)
        moved = largest_difference(pipe, make_model())
        assert moved > 100 * TOLERANCE, f"{schedule}: training barely moved the parameters ({moved})"
        print(f"PIPE-OPTIONS-OK rank={MPI.COMM_WORLD.rank} schedule={schedule} param_err={error:.1e}", flush=True)


if __name__ == "__main__":
    main()

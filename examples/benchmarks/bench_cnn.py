"""Training-step throughput of the MNIST-1D CNN: mpiprop against the same model in PyTorch eager, one thread.

The model is the MNIST-1D paper's CNN (three Conv1d of 25 channels, kernels 5, 3, 3, stride 2,
padding 1, ReLU; Linear 125 -> 10), float32, batch 128 of (1, 40) signals. One step is: zero
the gradients, forward, cross-entropy, backward (no input gradient), SGD with momentum. Both
start from the same weights (Conv1d weights cross unchanged, Linear's transposed), see the same
batches and are checked to compute the same numbers before they are timed. Rounds are
interleaved and the median round is compared; with --layers, the median time of each layer's
forward and backward in mpiprop is printed as well (where a step spends its time).

    OMP_NUM_THREADS=1 python examples/benchmarks/bench_cnn.py [--steps 50 --rounds 9 --batch 128] [--layers]
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `examples.benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.benchmarks.timing import medians, pin_threads, time_interleaved

pin_threads(1)  # before numpy loads its BLAS

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Callable, Sequence  # noqa: E402

import numpy  # noqa: E402

import mpiprop.network as nn  # noqa: E402
from mpiprop.network.models.cnn import mnist1d_cnn  # noqa: E402

LENGTH, CLASSES = 40, 10
AGREEMENT_STEPS = 3
AGREEMENT_TOLERANCE = 1e-4

Batch = tuple[numpy.ndarray, numpy.ndarray]


def random_batches(batch: int, count: int, seed: int) -> list[Batch]:
    rng = numpy.random.default_rng(seed)
    return [(rng.standard_normal((batch, 1, LENGTH), dtype=numpy.float32),
             rng.integers(0, CLASSES, size=batch, dtype=numpy.int64)) for _ in range(count)]


class MpipropStep:
    """One training step with mpiprop's mnist1d_cnn, CrossEntropyLoss and SGD."""

    def __init__(self, state: dict[str, numpy.ndarray], lr: float, momentum: float):
        self.model = mnist1d_cnn()
        self.model.load_state_dict(state)
        self.loss_fn = nn.CrossEntropyLoss()
        self.optimizer = nn.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)

    def __call__(self, x: numpy.ndarray, labels: numpy.ndarray) -> None:
        self.optimizer.zero_grad()
        self.loss_fn(self.model(x), labels)
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        self.optimizer.step()

    def state(self) -> dict[str, numpy.ndarray]:
        return self.model.state_dict()


class TorchStep:
    """The same step in PyTorch eager on the CPU."""

    def __init__(self, state: dict[str, numpy.ndarray], lr: float, momentum: float):
        import torch

        self.torch = torch
        t = torch.nn
        self.model = t.Sequential(t.Conv1d(1, 25, 5, 2, 1), t.ReLU(), t.Conv1d(25, 25, 3, 2, 1), t.ReLU(),
                                  t.Conv1d(25, 25, 3, 2, 1), t.ReLU(), t.Flatten(), t.Linear(125, CLASSES))
        self.model.load_state_dict({name: torch.from_numpy(value.T.copy() if name == "7.weight" else value)
                                    for name, value in state.items()})
        self.loss_fn = t.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)

    def __call__(self, x, labels) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_fn(self.model(x), labels).backward()
        self.optimizer.step()

    def state(self) -> dict[str, numpy.ndarray]:
        return {name: value.detach().numpy().T if name == "7.weight" else value.detach().numpy()
                for name, value in self.model.state_dict().items()}


def steps_runner(step: Callable, batches: list, steps: int) -> Callable[[], None]:
    def run() -> None:
        for index in range(steps):
            step(*batches[index % len(batches)])
    return run


def check_agreement(steps: dict[str, Callable], batches: dict[str, list]) -> float:
    """The largest parameter difference between the contestants after a few steps.

    Raises:
        RuntimeError: when they do not compute the same step.
    """
    for name, step in steps.items():
        steps_runner(step, batches[name], AGREEMENT_STEPS)()
    ours, theirs = steps["mpiprop"].state(), steps["torch"].state()
    difference = max(float(numpy.abs(ours[name] - theirs[name]).max()) for name in ours)
    if difference > AGREEMENT_TOLERANCE:
        raise RuntimeError(f"mpiprop and torch parameters differ by {difference:.3g} after {AGREEMENT_STEPS} steps "
                           f"(tolerance {AGREEMENT_TOLERANCE}); they do not compute the same step")
    return difference


def layer_times(model: nn.Sequential, x: numpy.ndarray, repeats: int) -> list[tuple[str, float, float]]:
    """(layer, median forward seconds, median backward seconds) for each layer of `model` on `x`."""
    rows, first = [], True
    for layer in model:
        forward, backward = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            y, cache = layer.forward(x)
            middle = time.perf_counter()
            if first:
                layer.backward_weight(numpy.ones_like(y), cache)  # the model's input needs no gradient
            else:
                layer.backward(numpy.ones_like(y), cache)
            forward.append(middle - start)
            backward.append(time.perf_counter() - middle)
        rows.append((repr(layer), float(numpy.median(forward)), float(numpy.median(backward))))
        x, first = y, False
    return rows


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", action="store_true", help="also time each mpiprop layer's forward and backward")
    args = parser.parse_args(argv)
    for name in ("steps", "rounds", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark and print throughputs and the ratio.

    Args:
        argv: command-line arguments (see --help); None reads sys.argv.

    Returns:
        {"samples_per_second": {"mpiprop": float, "torch": float}, "ratio": float (mpiprop / torch,
        median rounds), "best_round_ratio": float (fastest rounds), "max_difference": float}.
    """
    args = parse_arguments(argv)
    import torch

    torch.set_num_threads(1)
    nn.manual_seed(args.seed)
    state = mnist1d_cnn().state_dict()
    batches = {"mpiprop": random_batches(args.batch, 4, args.seed + 1)}
    batches["torch"] = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches["mpiprop"]]
    kinds = {"mpiprop": MpipropStep, "torch": TorchStep}
    print(f"numpy {numpy.__version__}, torch {torch.__version__} ({torch.get_num_threads()} thread)")

    difference = check_agreement({name: kind(state, args.lr, args.momentum) for name, kind in kinds.items()}, batches)
    print(f"largest parameter difference from torch after {AGREEMENT_STEPS} steps: {difference:.2g}")
    runners = {name: steps_runner(kind(state, args.lr, args.momentum), batches[name], args.steps)
               for name, kind in kinds.items()}
    rounds = time_interleaved(runners, args.rounds, args.warmup)
    seconds = medians(rounds)
    throughput = {name: args.batch * args.steps / value for name, value in seconds.items()}
    print(f"\nMNIST-1D CNN, batch {args.batch}, float32, SGD lr={args.lr} momentum={args.momentum}, "
          f"median of {args.rounds} interleaved rounds of {args.steps} steps:")
    for name, value in throughput.items():
        print(f"  {name:8s} {value:10.0f} samples/s  ({seconds[name] / args.steps * 1e3:.2f} ms/step)")
    ratio = throughput["mpiprop"] / throughput["torch"]
    best_ratio = min(rounds["torch"]) / min(rounds["mpiprop"])
    print(f"  mpiprop / torch: {ratio:.3f}x (fastest rounds compared: {best_ratio:.3f}x)")
    if args.layers:
        print("\nmpiprop per layer, median microseconds (forward, backward):")
        model = MpipropStep(state, args.lr, args.momentum).model
        for name, forward, backward in layer_times(model, batches["mpiprop"][0][0], max(args.steps, 5)):
            print(f"  {name:60s} {forward * 1e6:8.1f} {backward * 1e6:8.1f}")
    return {"samples_per_second": throughput, "ratio": ratio, "best_round_ratio": best_ratio,
            "max_difference": difference}


if __name__ == "__main__":
    main()

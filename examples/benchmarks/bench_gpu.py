"""Training-step throughput on one GPU: mpiprop on cupy against PyTorch CUDA eager.

The model is an MLP of 4096-wide layers (4096-4096-4096-4096-10) with ReLU,
softmax cross-entropy and SGD with momentum, float32, batch 1024. One step is:
zero the gradients, forward, loss (read back to the host by both), backward (no
input gradient), SGD update. Both start from the same weights, see the same
batches and are checked to compute the same numbers before they are timed.
Rounds are interleaved and the median round is compared; every round ends with
a device synchronisation.

    python examples/benchmarks/bench_gpu.py [--steps 20 --rounds 7 --batch 1024 --width 4096]

Target: mpiprop >= 0.9x PyTorch CUDA eager. Needs cupy and a GPU; PyTorch with CUDA
for the comparison.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

if __package__ in (None, ""):  # run as a script: make `examples.benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy

import mpiprop.network as nn
from examples.benchmarks.bench_network import MpipropStep, TorchStep, initial_weights, largest_difference
from examples.benchmarks.timing import medians, time_interleaved
from mpiprop.network import backend

TARGET = 0.9
AGREEMENT_STEPS = 3
AGREEMENT_TOLERANCE = 2e-3  # cuBLAS may order sums differently from run to run


def gpu_batches(sizes: Sequence[int], batch: int, count: int, seed: int) -> list[tuple[numpy.ndarray, numpy.ndarray]]:
    rng = numpy.random.default_rng(seed)
    return [(rng.standard_normal((batch, sizes[0]), dtype=numpy.float32),
             rng.integers(0, sizes[-1], size=batch, dtype=numpy.int64)) for _ in range(count)]


def mpiprop_on_gpu(sizes, weights, lr, momentum) -> MpipropStep:
    step = MpipropStep(sizes, weights, lr, momentum)
    step.model.to("cuda")
    step.optimizer = nn.optim.SGD(step.model.parameters(), lr=lr, momentum=momentum)
    return step


def torch_on_gpu(sizes, weights, lr, momentum) -> TorchStep:
    step = TorchStep(sizes, weights, lr, momentum)
    step.model.to("cuda")
    step.optimizer = step.torch.optim.SGD(step.model.parameters(), lr=lr, momentum=momentum)
    return step


def host_weights(weights) -> list:
    return [tuple(backend.to_numpy(a) for a in pair) for pair in weights]


def torch_host_weights(step: TorchStep) -> list:
    linears = [m for m in step.model if isinstance(m, step.torch.nn.Linear)]
    return [(m.weight.detach().cpu().numpy().T, m.bias.detach().cpu().numpy()) for m in linears]


def runner(step: Callable, batches: list, steps: int, synchronize: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        for index in range(steps):
            step(*batches[index % len(batches)])
        synchronize()
    return run


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--width", type=int, default=4096, help="width of the input and hidden layers")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("steps", "rounds", "batch", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark; returns {"samples_per_second": {...}, "ratio": float, "target_met": bool}."""
    args = parse_arguments(argv)
    if not backend.cupy_available():
        raise SystemExit("bench_gpu needs cupy and a GPU: pip install -e '.[gpu]' on a machine with an NVIDIA GPU")
    import cupy
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu compares against PyTorch CUDA, and this torch sees no GPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # plain float32 on both sides, as cupy's default
    print(f"GPU: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}; cupy {cupy.__version__}, "
          f"torch {torch.__version__}")
    sizes = (args.width,) * 4 + (10,)
    weights = initial_weights(sizes, args.seed)
    host = gpu_batches(sizes, args.batch, 4, args.seed + 1)
    batches = {"mpiprop": [(cupy.asarray(x), cupy.asarray(y)) for x, y in host],
               "torch": [(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()) for x, y in host]}

    def fresh() -> dict:
        return {"mpiprop": mpiprop_on_gpu(sizes, weights, args.lr, args.momentum),
                "torch": torch_on_gpu(sizes, weights, args.lr, args.momentum)}

    steps = fresh()
    for name, step in steps.items():
        runner(step, batches[name], AGREEMENT_STEPS, lambda: None)()
    difference = largest_difference(host_weights(steps["mpiprop"].weights()), torch_host_weights(steps["torch"]))
    print(f"largest weight difference mpiprop vs torch after {AGREEMENT_STEPS} steps: {difference:.2g}")
    if difference > AGREEMENT_TOLERANCE:
        raise RuntimeError(f"mpiprop and torch differ by {difference:.3g} (tolerance {AGREEMENT_TOLERANCE})")

    synchronize = {"mpiprop": cupy.cuda.Device().synchronize, "torch": torch.cuda.synchronize}
    runners = {name: runner(step, batches[name], args.steps, synchronize[name]) for name, step in fresh().items()}
    seconds = medians(time_interleaved(runners, args.rounds, args.warmup))
    throughput = {name: args.batch * args.steps / value for name, value in seconds.items()}
    print(f"MLP {'-'.join(map(str, sizes))}, batch {args.batch}, float32, SGD momentum {args.momentum}, "
          f"median of {args.rounds} interleaved rounds of {args.steps} steps:")
    for name, value in throughput.items():
        print(f"  {name:8s} {value:10.0f} samples/s  ({seconds[name] / args.steps * 1e3:.2f} ms/step)")
    ratio = throughput["mpiprop"] / throughput["torch"]
    print(f"  mpiprop / torch: {ratio:.3f}x ({'meets' if ratio >= TARGET else 'MISSES'} the {TARGET}x target)")
    return {"samples_per_second": throughput, "ratio": ratio, "target_met": ratio >= TARGET}


if __name__ == "__main__":
    main()

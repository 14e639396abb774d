"""Training-step throughput of an MLP: mpiprop against a hand-written numpy loop and PyTorch eager, one thread.

The model is 784-1024-1024-10 with ReLU, softmax cross-entropy and SGD, float32,
batch 256. One step is: zero the gradients, forward, loss, backward (no input
gradient), SGD update. All contestants start from the same weights, see the same
batches and are checked to compute the same numbers before they are timed.
Rounds are interleaved and the median round is compared.

    OMP_NUM_THREADS=1 python examples/benchmarks/bench_network.py [--steps 20 --rounds 7 --batch 256]

Targets: mpiprop >= 0.95x the numpy loop and >= 1.0x PyTorch (when installed).
With MKL installed (`pip install mpiprop[mkl]`) mpiprop's matrix products go through it,
and a fourth contestant, mpiprop-openblas, runs mpiprop on numpy's BLAS like the numpy loop.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `examples.benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.benchmarks.timing import medians, pin_threads, thread_pools, time_interleaved

pin_threads(1)  # before numpy loads its BLAS

import argparse  # noqa: E402
from typing import Callable, Sequence  # noqa: E402

import numpy  # noqa: E402

import mpiprop.network as nn  # noqa: E402
from mpiprop.network.compute import mkl_gemm  # noqa: E402

SIZES = (784, 1024, 1024, 10)
TARGETS = {"numpy": 0.95, "torch": 1.0}
SAME_BLAS = "mpiprop-openblas"
AGREEMENT_STEPS = 3
AGREEMENT_TOLERANCE = 1e-4

Weights = list[tuple[numpy.ndarray, numpy.ndarray]]  # (weight of shape (in, out), bias) per Linear
Batch = tuple[numpy.ndarray, numpy.ndarray]  # (inputs, integer labels)


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear, ReLU, ..., Linear for consecutive widths in `sizes`."""
    layers: list[nn.Layer] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def initial_weights(sizes: Sequence[int], seed: int) -> Weights:
    """The (weight, bias) pairs of a freshly initialised mpiprop MLP."""
    nn.manual_seed(seed)
    linears = [layer for layer in mlp(sizes) if isinstance(layer, nn.Linear)]
    return [(layer.weight.data.copy(), layer.bias.data.copy()) for layer in linears]


def random_batches(sizes: Sequence[int], batch: int, count: int, seed: int) -> list[Batch]:
    """`count` batches of standard-normal float32 inputs and uniform labels."""
    rng = numpy.random.default_rng(seed)
    return [(rng.standard_normal((batch, sizes[0]), dtype=numpy.float32),
             rng.integers(0, sizes[-1], size=batch, dtype=numpy.int64)) for _ in range(count)]


class MpipropStep:
    """One training step with mpiprop's Sequential, CrossEntropyLoss and SGD."""

    def __init__(self, sizes: Sequence[int], weights: Weights, lr: float, momentum: float):
        self.model = mlp(sizes)
        for layer, (weight, bias) in zip(self._linears(), weights):
            layer.weight.data[...] = weight
            layer.bias.data[...] = bias
        self.loss_fn = nn.CrossEntropyLoss()
        self.optimizer = nn.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)

    def __call__(self, x: numpy.ndarray, labels: numpy.ndarray) -> float:
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(x), labels)
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        self.optimizer.step()
        return loss

    def weights(self) -> Weights:
        return [(layer.weight.data, layer.bias.data) for layer in self._linears()]

    def _linears(self) -> list[nn.Linear]:
        return [layer for layer in self.model if isinstance(layer, nn.Linear)]


class MpipropOpenBlasStep(MpipropStep):
    """mpiprop's step with its matrix products on numpy's BLAS (OpenBLAS), as the numpy loop's are."""

    def __call__(self, x: numpy.ndarray, labels: numpy.ndarray) -> float:
        with mkl_gemm.disabled():
            return super().__call__(x, labels)


class NumpyStep:
    """The same step written by hand in numpy: in-place where natural, fused softmax-CE gradient."""

    def __init__(self, sizes: Sequence[int], weights: Weights, lr: float, momentum: float):
        self.params = [(weight.copy(), bias.copy()) for weight, bias in weights]
        self.lr = lr
        self.momentum = momentum
        self.buffers = [(numpy.zeros_like(w), numpy.zeros_like(b)) for w, b in self.params] if momentum else None

    def __call__(self, x: numpy.ndarray, labels: numpy.ndarray) -> float:
        activations = [x]
        for index, (weight, bias) in enumerate(self.params):
            h = activations[-1] @ weight
            h += bias
            if index < len(self.params) - 1:
                numpy.maximum(h, 0, out=h)
            activations.append(h)
        logits = activations.pop()
        logits -= logits.max(axis=1, keepdims=True)
        exp = numpy.exp(logits)
        sum_exp = exp.sum(axis=1, keepdims=True)
        rows = numpy.arange(len(labels))
        loss = float(numpy.log(sum_exp[:, 0]).mean() - logits[rows, labels].mean())
        grad = exp
        grad /= sum_exp
        grad[rows, labels] -= 1.0
        grad *= 1.0 / len(labels)
        grads = []
        for index in range(len(self.params) - 1, -1, -1):
            a = activations[index]
            grads.append((a.T @ grad, grad.sum(axis=0)))
            if index > 0:
                grad = grad @ self.params[index][0].T
                grad *= a > 0
        self._update(grads[::-1])
        return loss

    def _update(self, grads: Weights) -> None:
        for layer, (params, layer_grads) in enumerate(zip(self.params, grads)):
            for slot, (p, g) in enumerate(zip(params, layer_grads)):
                if self.momentum:
                    buffer = self.buffers[layer][slot]
                    buffer *= self.momentum
                    buffer += g
                    numpy.multiply(buffer, self.lr, out=g)
                else:
                    g *= self.lr
                p -= g

    def weights(self) -> Weights:
        return self.params


class TorchStep:
    """The same step in PyTorch eager on CPU: nn.Linear/ReLU, CrossEntropyLoss, optim.SGD."""

    def __init__(self, sizes: Sequence[int], weights: Weights, lr: float, momentum: float):
        import torch

        self.torch = torch
        layers = []
        for weight, bias in weights:
            linear = torch.nn.Linear(*weight.shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(weight.T.copy()))
                linear.bias.copy_(torch.from_numpy(bias))
            layers += [linear, torch.nn.ReLU()]
        self.model = torch.nn.Sequential(*layers[:-1])
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)

    def __call__(self, x, labels) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), labels)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def weights(self) -> Weights:
        linears = [m for m in self.model if isinstance(m, self.torch.nn.Linear)]
        return [(m.weight.detach().numpy().T, m.bias.detach().numpy()) for m in linears]


def torch_batches(batches: list[Batch]) -> list:
    """The same batches as torch tensors sharing the numpy memory."""
    import torch

    return [(torch.from_numpy(x), torch.from_numpy(labels)) for x, labels in batches]


def steps_runner(step: Callable, batches: list, steps: int) -> Callable[[], None]:
    """A callable that runs `steps` training steps, cycling through `batches`."""
    def run() -> None:
        for index in range(steps):
            step(*batches[index % len(batches)])
    return run


def largest_difference(weights: Weights, reference: Weights) -> float:
    """Largest absolute difference between two sets of weights."""
    return max(float(numpy.abs(a - b).max()) for pair, ref in zip(weights, reference) for a, b in zip(pair, ref))


def check_agreement(steps: dict[str, Callable], batches: dict[str, list]) -> dict[str, float]:
    """Run a few steps of each contestant and return each one's largest weight difference from numpy.

    Raises:
        RuntimeError: when a contestant computes something else than the numpy loop.
    """
    for name, step in steps.items():
        steps_runner(step, batches[name], AGREEMENT_STEPS)()
    reference = steps["numpy"].weights()
    differences = {name: largest_difference(step.weights(), reference) for name, step in steps.items() if name != "numpy"}
    for name, difference in differences.items():
        if difference > AGREEMENT_TOLERANCE:
            raise RuntimeError(f"{name} weights differ from the numpy loop by {difference:.3g} after "
                               f"{AGREEMENT_STEPS} steps (tolerance {AGREEMENT_TOLERANCE}); they do not compute the same step")
    return differences


def matmul_operands(sizes: Sequence[int], batch: int, seed: int) -> list[tuple[numpy.ndarray, numpy.ndarray]]:
    """The (a, b) operands, with the step's transposed views, of every matrix product in one training step."""
    rng = numpy.random.default_rng(seed)

    def matrix(rows: int, columns: int) -> numpy.ndarray:
        return rng.standard_normal((rows, columns), dtype=numpy.float32)

    operands = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        x, weight, dy = matrix(batch, fan_in), matrix(fan_in, fan_out), matrix(batch, fan_out)
        operands += [(x, weight), (x.T, dy)]  # forward, weight gradient
        if index > 0:
            operands.append((dy, weight.T))  # input gradient
    return operands


def matmul_runners(operands: list, repeats: int, with_torch: bool) -> dict[str, Callable[[], None]]:
    """Callables doing the step's matrix products `repeats` times, with numpy and (optionally) torch."""
    def numpy_products() -> None:
        for _ in range(repeats):
            for a, b in operands:
                a @ b

    runners = {"numpy": numpy_products}
    if with_torch:
        import torch

        tensors = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in operands]

        def torch_products() -> None:
            for _ in range(repeats):
                for a, b in tensors:
                    torch.mm(a, b)

        runners["torch"] = torch_products
    return runners


def import_torch():
    """torch limited to one thread, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # can only be set once per process
        pass
    return torch


def describe_environment(torch) -> None:
    print(f"numpy {numpy.__version__}; python {sys.version.split()[0]}; mpiprop's matrix products through "
          f"{'MKL' if mkl_gemm.available() else 'numpy'}")
    pools = thread_pools()
    if pools:
        print("thread pools (threadpoolctl):")
        for line in pools:
            print(f"  {line}")
    else:
        config = numpy.show_config(mode="dicts")
        print(f"numpy BLAS: {config['Build Dependencies']['blas']}")
    if torch is None:
        print("torch: not installed, PyTorch is left out")
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
              f"mkldnn={torch.backends.mkldnn.is_available()}, mkl={torch.backends.mkl.is_available()}")


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.0, help="SGD momentum for every contestant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when it is installed")
    parser.add_argument("--no-matmul", action="store_true", help="skip timing the bare matrix products")
    args = parser.parse_args(argv)
    for name in ("steps", "rounds", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark and print throughputs and ratios.

    Args:
        argv: command-line arguments (see --help); None reads sys.argv.

    Returns:
        {"samples_per_second": {name: float}, "ratios": {"numpy": float, "torch": float},
        "targets_met": {"numpy": bool, "torch": bool}, "best_round_ratios": {"numpy": float, "torch": float},
        "matmul_ratio": float or None} (the torch entries only when PyTorch runs). Ratios are
        mpiprop's throughput over the other's, from the median rounds (`best_round_ratios`: fastest rounds).
    """
    args = parse_arguments(argv)
    torch = None if args.no_torch else import_torch()
    describe_environment(torch)
    weights = initial_weights(SIZES, args.seed)
    batches = {"mpiprop": random_batches(SIZES, args.batch, 4, args.seed + 1)}
    batches["numpy"] = batches["mpiprop"]
    kinds = {"mpiprop": MpipropStep, "numpy": NumpyStep}
    if mkl_gemm.available():
        batches[SAME_BLAS] = batches["numpy"]
        kinds[SAME_BLAS] = MpipropOpenBlasStep
    if torch is not None:
        batches["torch"] = torch_batches(batches["numpy"])
        kinds["torch"] = TorchStep

    def fresh_steps() -> dict[str, Callable]:
        return {name: kind(SIZES, weights, args.lr, args.momentum) for name, kind in kinds.items()}

    differences = check_agreement(fresh_steps(), batches)
    print("largest weight difference from the numpy loop after "
          f"{AGREEMENT_STEPS} steps: " + ", ".join(f"{name} {value:.2g}" for name, value in differences.items()))

    runners = {name: steps_runner(step, batches[name], args.steps) for name, step in fresh_steps().items()}
    rounds = time_interleaved(runners, args.rounds, args.warmup)
    seconds = medians(rounds)
    throughput = {name: args.batch * args.steps / value for name, value in seconds.items()}
    print(f"\nMLP {'-'.join(map(str, SIZES))}, batch {args.batch}, float32, SGD lr={args.lr} momentum={args.momentum}, "
          f"median of {args.rounds} interleaved rounds of {args.steps} steps:")
    for name, value in throughput.items():
        print(f"  {name:17s} {value:10.0f} samples/s  ({seconds[name] / args.steps * 1e3:.2f} ms/step)")

    ratios = {name: throughput["mpiprop"] / throughput[name] for name in throughput if not name.startswith("mpiprop")}
    targets_met = {name: ratios[name] >= TARGETS[name] for name in ratios}
    best = {name: min(values) for name, values in rounds.items()}
    best_ratios = {name: best[name] / best["mpiprop"] for name in ratios}
    for name, ratio in ratios.items():
        verdict = "meets" if targets_met[name] else "MISSES"
        print(f"  mpiprop / {name}: {ratio:.3f}x  ({verdict} the {TARGETS[name]:.2f}x target; "
              f"fastest rounds compared: {best_ratios[name]:.3f}x)")

    if SAME_BLAS in throughput:
        same_blas_ratio = throughput[SAME_BLAS] / throughput["numpy"]
        print(f"  mpiprop's products go through MKL; with numpy's BLAS, as the numpy loop's: "
              f"{SAME_BLAS} / numpy {same_blas_ratio:.3f}x")
        same_blas_ratios = {"numpy": same_blas_ratio}
    else:
        print("  mpiprop's products go through numpy's BLAS, as the numpy loop's (MKL not installed)")
        same_blas_ratios = {"numpy": ratios["numpy"]}
    matmul_ratio = None
    if torch is not None and not args.no_matmul:
        operands = matmul_operands(SIZES, args.batch, args.seed + 2)
        matmul_seconds = medians(time_interleaved(matmul_runners(operands, args.steps, True), args.rounds, args.warmup))
        matmul_ratio = matmul_seconds["torch"] / matmul_seconds["numpy"]
        print(f"  the step's {len(operands)} matrix products alone: numpy {matmul_seconds['numpy'] / args.steps * 1e3:.2f} "
              f"ms, torch {matmul_seconds['torch'] / args.steps * 1e3:.2f} ms (numpy/torch speed {matmul_ratio:.3f}x)")
    return {"samples_per_second": throughput, "ratios": ratios, "targets_met": targets_met,
            "best_round_ratios": best_ratios, "matmul_ratio": matmul_ratio, "same_blas_ratios": same_blas_ratios}


if __name__ == "__main__":
    main()

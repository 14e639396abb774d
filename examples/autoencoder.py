"""Train an autoencoder on scikit-learn's digits without labels; prints the reconstruction error and saves a PNG.

    python examples/autoencoder.py --plot-out autoencoder.png
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy

import mpiprop.network as nn
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.network.data.datasets import load_digits
from mpiprop.network.training.plots import plot_reconstructions
from mpiprop.network.data.preprocessing import train_val_split
from mpiprop.network.optim.lr_schedules import CosineAnnealingLR

IMAGES_SHOWN = 10


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60, help="epochs (default 60)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch (default 32)")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate of Adam (default 1e-2)")
    parser.add_argument("--code-size", type=int, default=12, help="width of the bottleneck (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and shuffling")
    parser.add_argument("--plot-out", default="autoencoder.png", help="PNG of originals above reconstructions")
    parser.add_argument("--metrics-out", help="write one JSON line of metrics per epoch to this file")
    parser.add_argument("--quiet", action="store_true", help="print only the final lines")
    return parser.parse_args(argv)


def build_autoencoder(code_size: int) -> nn.Sequential:
    """64 pixels -> 48 -> code -> 48 -> 64 pixels in [0, 1] (sigmoid output)."""
    return nn.Sequential(
        nn.Linear(64, 48), nn.Tanh(), nn.Linear(48, code_size), nn.Tanh(),
        nn.Linear(code_size, 48), nn.Tanh(), nn.Linear(48, 64), nn.Sigmoid(),
    )


def pca_reconstruction_mse(x_train: numpy.ndarray, x_test: numpy.ndarray, components: int) -> float:
    """Test MSE of the best linear code of the same size: projecting onto the top principal components."""
    mean = x_train.mean(axis=0)
    _, _, directions = numpy.linalg.svd(x_train - mean, full_matrices=False)
    basis = directions[:components]
    reconstruction = (x_test - mean) @ basis.T @ basis + mean
    return float(((reconstruction - x_test) ** 2).mean())


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the example; returns the test reconstruction MSE, and those of the mean image and of PCA."""
    args = parse_args(argv)
    nn.manual_seed(args.seed)
    x, _ = load_digits()
    (x_rest, _), (x_test, _) = train_val_split(x, x, 0.2, seed=0)
    (x_train, _), (x_val, _) = train_val_split(x_rest, x_rest, 0.15, seed=args.seed)
    train_loader = DataLoader(ArrayDataset(x_train, x_train), args.batch_size, shuffle=True, seed=args.seed)
    val_loader = DataLoader(ArrayDataset(x_val, x_val), 256)
    test_loader = DataLoader(ArrayDataset(x_test, x_test), 256)
    model = build_autoencoder(args.code_size)
    optimizer = nn.optim.Adam(model.parameters(), lr=args.lr)
    schedule = CosineAnnealingLR(args.lr, total=args.epochs * len(train_loader))
    trainer = nn.Trainer(model, nn.MSELoss(), optimizer, lr_schedule=schedule, metrics_path=args.metrics_out,
                         quiet=args.quiet)
    trainer.fit(train_loader, args.epochs, val_loader)
    mse = trainer.evaluate(test_loader)["loss"]
    baseline = float(((x_test - x_train.mean(axis=0)) ** 2).mean())
    pca = pca_reconstruction_mse(x_train, x_test, args.code_size)
    shown = x_test[:IMAGES_SHOWN]
    reconstructions, _ = model.forward(shown)
    plot_reconstructions(shown, numpy.asarray(reconstructions), (8, 8), args.plot_out)
    print(f"saved {args.plot_out}")
    print(f"mean_image_mse={baseline:.5f}")
    print(f"pca_mse={pca:.5f}")
    print(f"reconstruction_mse={mse:.5f}")
    return {"reconstruction_mse": mse, "mean_image_mse": baseline, "pca_mse": pca}


if __name__ == "__main__":
    main()

"""BatchNorm2d: normalise each channel of (batch, channels, height, width) over the batch and both spatial axes."""
from __future__ import annotations

from mpiprop.network.layers.batchnorm import BatchNorm1d


class BatchNorm2d(BatchNorm1d):
    """Batch normalisation of inputs shaped (batch, channels, height, width), as torch.nn.BatchNorm2d.

    The same math as `BatchNorm1d` (statistics over every axis but the channel axis, running mean
    and unbiased running variance with `momentum`); only the accepted input rank differs.

    Args:
        num_features: the channels C.
        eps, momentum, affine, track_running_stats, dtype, device: as `BatchNorm1d`.

    Raises:
        ValueError: for a non-positive num_features or a negative eps or momentum; in forward, for an
            input that is not 4-D with num_features channels.
    """

    input_ranks = (4,)

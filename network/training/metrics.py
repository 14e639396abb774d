"""Loss and accuracy kept as sums and counts, so averages over batches and ranks are exact."""
from __future__ import annotations

from typing import Callable

from mpiprop.network.backend import Array

MetricSums = dict[str, float]


def count_correct(output: Array, target: Array) -> int:
    """Correct predictions in a batch.

    (batch, classes) outputs against integer labels count argmax hits; outputs of the target's
    shape count (output > 0) == (target > 0.5), i.e. logits against binary targets.

    Raises:
        ValueError: for shapes that are neither.
    """
    if output.ndim == 2 and target.ndim == 1:
        return int((output.argmax(axis=1) == target).sum())
    if output.shape == target.shape:
        return int(((output > 0) == (target > 0.5)).sum())
    raise ValueError(f"cannot count correct predictions for outputs of shape {tuple(output.shape)} and targets of "
                     f"shape {tuple(target.shape)}; expected (batch, classes) and (batch,), or equal shapes")


class MetricTotals:
    """Running sums over batches: loss x samples, correct predictions, samples, predictions.

    `result()` divides sums, never averages averages, so the result does not depend on how
    the samples were split into batches or over ranks.
    """

    def __init__(self) -> None:
        self.sums: MetricSums = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "predictions": 0.0}

    def add(self, loss: float, batch_size: int, correct: int | None = None, predictions: int = 0) -> None:
        """Record one batch: its mean `loss` over `batch_size` samples, and `correct` of `predictions`."""
        self.sums["loss_sum"] += loss * batch_size
        self.sums["count"] += batch_size
        if correct is not None:
            self.sums["correct"] += correct
            self.sums["predictions"] += predictions

    def result(self, combine: Callable[[MetricSums], MetricSums] | None = None, prefix: str = "") -> dict[str, float]:
        """{"loss": ..., "accuracy": ...} (accuracy only when counted), with keys prefixed by `prefix`.

        Args:
            combine: applied to the sums before dividing (over ranks: sum or mean, the ratios agree).
        """
        sums = combine(dict(self.sums)) if combine is not None else self.sums
        missing = sorted(set(self.sums) - set(sums))
        if missing:
            raise ValueError(f"average_metrics returned {sorted(sums)}, missing {missing}; return every key it gets")
        if sums["count"] <= 0:
            raise ValueError("no samples were seen, so there is no metric to report; check the loader")
        result = {prefix + "loss": sums["loss_sum"] / sums["count"]}
        if sums["predictions"] > 0:
            result[prefix + "accuracy"] = sums["correct"] / sums["predictions"]
        return result

    def state_dict(self) -> MetricSums:
        return dict(self.sums)

    def load_state_dict(self, state: MetricSums) -> None:
        self.sums = {key: float(state[key]) for key in self.sums}

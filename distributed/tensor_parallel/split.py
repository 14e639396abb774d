"""Split: how one parameter of the single-process model is cut over the ranks of a tensor-parallel group."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mpiprop.network.backend import get_array_module, is_array


@dataclass(frozen=True)
class Split:
    """A parameter split along `axis` over `ranks` ranks; `whole` is its shape in the single-process model.

    Each rank holds ceil(whole[axis] / ranks) entries along `axis`, the last ones padded with zeros
    where `ranks` does not divide the length (a vocabulary). With `blocks` > 1 the axis holds that
    many equal blocks (a fused [q | k | v] projection: 3), each split on its own, and a rank's share
    is its slice of every block, side by side.
    """

    axis: int
    whole: tuple[int, ...]
    ranks: int
    blocks: int = 1

    @property
    def share_length(self) -> int:
        """Entries along `axis` that each rank holds, padding included."""
        return self.blocks * -(-self.whole[self.axis] // (self.blocks * self.ranks))

    def share_shape(self) -> tuple[int, ...]:
        """The shape of each rank's share."""
        shape = list(self.whole)
        shape[self.axis] = self.share_length
        return tuple(shape)


def cut_share(value: Any, split: Split, rank: int) -> Any:
    """Tensor rank `rank`'s share of `value`, a copy, when `value` has the whole shape; anything else unchanged.

    A dict (an optimizer's state for one parameter) is cut entry by entry.
    """
    if isinstance(value, dict):
        return {key: cut_share(item, split, rank) for key, item in value.items()}
    if not is_array(value) or tuple(value.shape) != tuple(split.whole):
        return value
    xp = get_array_module(value)
    block_length = split.whole[split.axis] // split.blocks
    width = split.share_length // split.blocks
    pieces = []
    for block in range(split.blocks):
        start = block * block_length + rank * width
        stop = min(start + width, (block + 1) * block_length)
        piece = value.take(xp.arange(start, max(start, stop)), axis=split.axis)
        pieces.append(_padded(piece, split.axis, width))
    return xp.concatenate(pieces, axis=split.axis) if len(pieces) > 1 else pieces[0]


def _padded(piece: Any, axis: int, width: int) -> Any:
    missing = width - piece.shape[axis]
    if missing == 0:
        return piece
    xp = get_array_module(piece)
    shape = list(piece.shape)
    shape[axis] = missing
    return xp.concatenate([piece, xp.zeros(shape, dtype=piece.dtype)], axis=axis)

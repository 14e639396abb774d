"""ShardedOptimizer: each data-parallel rank keeps the optimizer state of its own share of the parameters (ZeRO)."""
from __future__ import annotations

import warnings
from typing import Any, Sequence

from mpiprop.distributed.data_parallel.parameter_allgather import ParameterAllgather
from mpiprop.distributed.data_parallel.parameter_allgather_shared import (SharedMemoryParameterAllgather,
                                                                           parameter_window_shortage)
from mpiprop.distributed.reliability.waits import waiting_in
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import device_of
from mpiprop.network.optim.optimizer import Optimizer, ParamsOrGroups
from mpiprop.network.layers.parameter import Parameter


class ShardedOptimizer:
    """The user's optimizer, whose state each rank keeps for the parameters it owns only.

    Parameters are sharded whole (PyTorch ZeroRedundancyOptimizer style), so the user's optimizer
    class updates them unchanged, with every hyperparameter and group, and its state stays keyed
    by parameter, as checkpoints store it. `step()` updates this rank's own parameters that have a
    gradient, then every rank takes each parameter's values from its owner (one allgather per
    gradient bucket). Gradients must be the averaged ones of DataParallel (ZeRO-1), or at least
    those of this rank's own parameters (ZeRO-2). Build it with `DataParallel.optimizer`.

    Args:
        optimizer_class: e.g. `nn.optim.Adam`.
        params: the parameters, or parameter groups, of the DataParallel model.
        comm: the data-parallel ranks.
        owner_of: the owning rank of every parameter, by `id`.
        buckets: the parameters of each gradient bucket (owners in rank order within each).
        shared_memory: give the updated parameters to the other ranks through memory shared by all
            of them (all on one node), else with MPI's allgather.
        hyperparameters: the optimizer class's keyword arguments, e.g. `lr=1e-3`.

    Raises:
        ValueError: for parameters that are not numpy arrays or not in the model, and whatever the
            optimizer class raises for its arguments.
    """

    def __init__(self, optimizer_class: type[Optimizer], params: ParamsOrGroups, comm: Communicator,
                 owner_of: dict[int, int], buckets: Sequence[Sequence[Parameter]], *, shared_memory: bool = False,
                 **hyperparameters: Any):
        self.optimizer = optimizer_class(params, **hyperparameters)
        self.comm = comm
        outside = [p for p in self.optimizer.params if id(p) not in owner_of]
        if outside:
            raise ValueError(f"{len(outside)} parameters, first {outside[0]!r}, are not in the data-parallel model; "
                             "build the optimizer from dp.parameters()")
        on_gpu = [p for p in self.optimizer.params if device_of(p.data) != "cpu"]
        if on_gpu:
            raise ValueError(f"sharded optimizer state needs numpy parameters, got {on_gpu[0]!r} on a GPU; "
                             "use DataParallel without shard_optimizer_state there")
        self.owned = [owner_of[id(p)] == comm.rank for p in self.optimizer.params]
        self._allgather = _parameter_allgather(buckets, owner_of, comm, shared_memory)

    # --- what a training loop uses --------------------------------------------------------------
    @property
    def params(self) -> list[Parameter]:
        """Every parameter, owned here or not, in the optimizer's order."""
        return self.optimizer.params

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @property
    def state(self) -> list[dict[str, Any]]:
        """Per-parameter state: filled for this rank's own parameters, empty for the others."""
        return self.optimizer.state

    @property
    def step_count(self) -> int:
        return self.optimizer.step_count

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer.lr = value

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Reset every gradient to zero (see `Optimizer.zero_grad`)."""
        self.optimizer.zero_grad(set_to_none)

    def step(self) -> None:
        """Update this rank's own parameters that have a gradient, then give every rank all the values. Collective.

        Raises:
            ValueError: for a learning rate that became negative or NaN (on every rank, nothing updated).
        """
        others = [p for p, mine in zip(self.params, self.owned) if not mine and p.has_grad]
        for p in others:
            p.has_grad = False
        try:
            self.optimizer.step()
        finally:
            for p in others:
                p.has_grad = True
        self._allgather.run()

    # --- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state dict with every rank's shard of the state, on rank 0. Collective.

        Returns:
            On rank 0 the whole state, as the unsharded optimizer gives it; on another rank the
            same dict holding only that rank's own parameters' state (empty entries for the rest).
        """
        state = self.optimizer.state_dict()
        mine = {index: entry for index, (entry, owned) in enumerate(zip(state["state"], self.owned)) if owned}
        with waiting_in("gather of the optimizer state's shards"):
            shards = self.comm.gather_object(mine)
        if shards is not None:
            for shard in shards:
                for index, entry in shard.items():
                    state["state"][index] = entry
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a whole optimizer state dict (from any layout); this rank keeps its own parameters' state.

        Raises:
            ValueError: as `Optimizer.load_state_dict`: another optimizer type, other groups or shapes.
        """
        entries = state.get("state", [])
        if len(entries) == len(self.owned):
            state = {**state, "state": [entry if owned else {} for entry, owned in zip(entries, self.owned)]}
        self.optimizer.load_state_dict(state)

    def __repr__(self) -> str:
        owned = sum(self.owned)
        return (f"ShardedOptimizer({type(self.optimizer).__name__}, rank {self.comm.rank} of {self.comm.size} "
                f"owns {owned} of {len(self.owned)} parameters)")


def _parameter_allgather(buckets: Sequence[Sequence[Parameter]], owner_of: dict[int, int], comm: Communicator,
                         shared_memory: bool) -> "ParameterAllgather | SharedMemoryParameterAllgather":
    """Through shared memory when asked for and /dev/shm has room (else rank 0 warns), else MPI's allgather."""
    params = [p for bucket in buckets for p in bucket]
    if shared_memory:
        shortage = parameter_window_shortage(params, owner_of, comm)
        if shortage is None:
            return SharedMemoryParameterAllgather(params, owner_of, comm)
        if comm.is_main:
            warnings.warn(shortage, RuntimeWarning, stacklevel=4)
    return ParameterAllgather(buckets, owner_of, comm)

"""LocalStrategy: the training-step contract for a model trained in this process alone."""
from __future__ import annotations

from mpiprop.network.layers.layer import Layer
from mpiprop.network.training.ranks import OneProcess
from mpiprop.network.training.whole_model import WholeModelStrategy, loss_and_output_gradient

__all__ = ["LocalStrategy", "loss_and_output_gradient"]


class LocalStrategy(WholeModelStrategy):
    """One process trains the whole `module`; the reference every distributed strategy agrees with.

    It implements `TrainingStrategy` (see network.training.strategy), the contract the Trainer
    talks to, with the ranks of one process (`ranks`, a `OneProcess`)::

        loss = strategy.train_step(x, y, loss_fn)   # forward, backward, gradients in sync
        strategy.parameters(), named_parameters(), train(), eval(), predict(x)
        strategy.state_dict() / load_state_dict(state)   # the model's full parameter names
        strategy.state_shapes()                          # every entry of the whole model's state
        strategy.last_output                             # the last step's output

    Args:
        module: the model, usually a Sequential.

    Raises:
        TypeError: when `module` is not a network Layer.
    """

    def __init__(self, module: Layer):
        super().__init__(module)
        self.ranks = OneProcess()

"""layers: the layer contract and every layer, activation, loss and initialisation."""

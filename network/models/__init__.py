"""models: ready-made model builders (a GPT) and what they need beside the layers."""

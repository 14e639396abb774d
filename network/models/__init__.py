"""models: ready-made model builders that return a Sequential (a GPT) and what they need beside the layers."""

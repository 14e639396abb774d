"""models: ready-made model builders that return a Sequential."""

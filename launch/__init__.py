"""launch: the `mpiprop` command line (run, info, scale, model, trace) and what it runs on each rank."""

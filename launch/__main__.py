"""`python -m mpiprop.launch ...` is the `mpiprop` command."""
from mpiprop.launch.cli import main

raise SystemExit(main())

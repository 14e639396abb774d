"""`python -m launch ...` is the `mpiprop` command."""
from launch.cli import main

raise SystemExit(main())

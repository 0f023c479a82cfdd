"""`python -m scp_node` runs the `lungnode` command line."""

from scp_node.app.cli import main

raise SystemExit(main())

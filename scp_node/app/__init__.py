"""Entry points: the `lungnode` command line, `lungnode serve` (the service that wires every
stage together), `check-config` and `selftest`."""

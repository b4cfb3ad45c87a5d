"""The `qfid` command line: app.py wires one module per command."""

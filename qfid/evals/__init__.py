"""Domain evaluation: suites (YAML + JSONL items), scorers, backends, runs.

Importing this package is cheap on purpose (no torch, no suite indexing): `qfid suites`
and the scorers' tests must start instantly, and only the suites asked for are read.
"""

"""Benchmarks (issue 7): the storefront measured against the bare database, in the same run.

`make bench` (or `python -m benchmarks`) runs every row, prints the table and writes
`var/bench.json`; `docs/perf.md` explains each row and shows the latest table.
"""

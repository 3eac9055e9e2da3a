"""Fault injection: each module injects one family of faults and checks what the pipeline does.

The scenarios are plain functions returning :class:`tests.faults.outcome.FaultRow`; the fast ones
also run under pytest (``test_*.py`` here), and ``benchmarks/faults.py`` runs them all and writes
``benchmarks/results/faults.json`` and the table of ``docs/reliability.md``.
"""

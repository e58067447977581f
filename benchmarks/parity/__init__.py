"""Parity with the reference releases: run a reference from its own checkout (outside the project;
its code never enters ours) and ours on the same tiny model and inputs, and compare numbers.

``python -m benchmarks.parity --rome-dir ... --memit-dir ...`` prints the parity table; see
:mod:`benchmarks.parity.__main__`.
"""

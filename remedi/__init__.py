"""remedi: a workbench for inspecting and editing the knowledge representations of LMs.

Data flows one way through the package:
``models`` -> ``data`` -> ``precompute`` -> ``editors``/``training`` -> ``evaluation`` ->
``report`` -> results on disk.
A lower module never imports a higher one.
"""

__version__ = "0.1.0"

"""unidl's benchmark harness: unidl's training step against the same step hand-written in each framework.

It ships with the source repository, not with the installed package: run ``unidl bench`` (or
``python benchmarks/bench.py``) in a checkout. ``bench.py`` runs the comparisons the other files hold.
"""

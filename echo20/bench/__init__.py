"""The event-loop benchmark: C load generator, C reference server, Python targets on every loop.

``echo20-bench`` (or ``python -m echo20.bench``); the modules, each one job:

* ``cli``: the command line; ``matrix``: ``run``; ``compare``: ``compare``;
  ``memory``: ``idle`` and ``cold-start``; ``servers``: the bench-only ``floor`` and
  ``sockets`` servers.
* ``targets``: what runs (implementation x loop); ``tools``: the C sources, compiled on
  first use; ``processes``: server processes, pinning, ``/proc``.
* ``measure``: one load-generator run; ``histograms``: HdrHistograms of its latencies;
  ``stats``: cells, medians, spreads, ratios; ``budgets``: ``--budget`` limits.
* ``environment``: the machine and software of a run; ``report`` and ``charts``: tables,
  bench.json, bench.md, PNG charts; ``units``: sizes, rates, number formats.
"""

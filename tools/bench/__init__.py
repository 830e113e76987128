"""``taskengine bench``: the performance harness. Every figure is measured beside a baseline
in the same run and reported as a ratio; nothing here asserts a speed.

``command`` is the front end; ``baselines`` the designs the engine is compared with;
``engine_figures`` the engine's own figures; ``history`` open and replay times against the
amount of history; ``measure`` the helpers they share; ``probe`` single measurements for a
profiler (``python -m taskengine.tools.bench.probe``). Nothing is imported here.
"""

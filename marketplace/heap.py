"""Keep the cyclic garbage collector off a serving process's hot path.

A full collection walks every object the process holds. After start-up, a node, a seller or a
buyer holds 140,000 to 230,000 of them (modules, classes, protobuf descriptors, SQLAlchemy and
OpenTelemetry state) that live as long as the process. Walking them took 90-150 ms on a 2-core
machine, with the interpreter lock held, so every call in flight waited that long. In the
deployed benchmark that happened about once per process every 15 s, on top of frequent
small collections.

`settle_heap`, called once a server has started, moves what the process holds then into the
collector's permanent generation (`gc.freeze`). Later full collections walk only objects made
since. It also raises the first generation's threshold, so cycles made while serving are
collected in fewer, larger passes. Reference counting frees everything else as before. The cost
is that a cycle among the frozen objects that later becomes garbage is never collected: the
frozen objects are the start-up state a server keeps anyway.

It is for a process that serves: the node and gateway commands call it. A seller's or buyer's
own process calls it once its agents have started. A test suite or a notebook that makes and
drops many agents in one process should not call it.
"""

from __future__ import annotations

import gc

FIRST_GENERATION_THRESHOLD = 10_000  # CPython's default is 700 allocations
OLDER_GENERATION_THRESHOLD = 20  # each older generation: collections of the one below (10)


def settle_heap(first_generation: int = FIRST_GENERATION_THRESHOLD,
                older_generations: int = OLDER_GENERATION_THRESHOLD) -> int:
    """Freeze what the process holds now and set the collection thresholds; returns how many
    objects are frozen in all (calling it again freezes what was made since)."""
    if first_generation < 1 or older_generations < 1:
        raise ValueError("collection thresholds must be at least 1")
    gc.collect()  # what is garbage already is freed, not frozen
    gc.freeze()
    gc.set_threshold(first_generation, older_generations, older_generations)
    return gc.get_freeze_count()

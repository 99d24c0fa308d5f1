"""The fault-injection suite: sellers, buyers (plain and checkpointed) and a marketplace node as
real processes, faults injected along the paid path from a seed, invariants checked after every
run (`tests.faults.world`, `tests.faults.invariants`).

    python -m tests.faults --seed 7 --duration 600     # runs seeds 7, 8, ... for 10 minutes
    python -m tests.faults --seed 7 --runs 1           # replay one seed
"""

"""A market sandbox: a token economy simulated through the real stack (`agentmarket simulate`).

    scenario   the TOML scenario, checked field by field
    skills     per-call, per-token (litellm, offline) and GPU-second skills; faults and forgery
    pricing    sellers' pricing strategies; FX rates that move between rounds
    market     the node, sellers, buyers and arbiter of one run
    trade      one task: negotiate, convert, escrow, paid calls, settle or dispute
    loop       rounds on a simulated clock, deterministic for a scenario and seed
    events     the events file
    plots      the PNG plots; report: the summary table and the HTML report
"""

"""The `agentmarket` command: the top floor, which may import every package; nothing imports it."""

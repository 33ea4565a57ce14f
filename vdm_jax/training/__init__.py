"""Training: the train state and optimizer (`state`), the jitted step (`step`), the loop with
its checkpoints, signals and hooks (`loop`), and what a run writes for its user (`logs`).
A sibling of generation and evaluation: it imports neither (the pipelines layer joins them)."""

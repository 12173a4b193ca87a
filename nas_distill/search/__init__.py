"""Search: the space, the searchers (Optuna sampler wrappers) and the Pareto front.

Knows nothing of torch or keras (see DESIGN.md: one direction of dependency).
"""

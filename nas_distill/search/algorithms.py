"""The names a config or a caller may give a search algorithm (plain data: no Optuna import).

Shared by ``config.py`` (validation) and ``search/searchers.py`` (``make_searcher``) so both accept
exactly the same spellings.
"""

SEARCH_ALGORITHMS = ("grid", "random", "bo", "tpe", "gp", "nsga2")
ALGORITHM_ALIASES = {
    "grid": "grid",
    "gridsearch": "grid",
    "gridsampler": "grid",
    "random": "random",
    "randomsearch": "random",
    "randomsampler": "random",
    "bo": "bo",
    "bayesian": "bo",
    "bayesianoptimization": "bo",
    "tpe": "tpe",
    "tpesampler": "tpe",
    "gp": "gp",
    "gpsampler": "gp",
    "nsga2": "nsga2",
    "nsgaii": "nsga2",
    "nsgaiisampler": "nsga2",
}

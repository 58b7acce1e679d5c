"""Ray Tune sweeps of IDARTS searches, swept with Optuna and tracked in MLflow.

The submodules that need Ray, Optuna or MLflow import them themselves, so
``import tune`` and ``tune.sweep_config`` stay light.
"""

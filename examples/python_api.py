# %% [markdown]
# # fllab from Python: run, sweep, load results into pandas
#
# A notebook-style walk-through (cells marked `# %%`; open it in Jupyter with jupytext or VS Code,
# or run it top to bottom: `python examples/python_api.py`, about a minute on 2 CPU cores).
# The Python API has the command line's verbs: `fllab.run`, `fllab.sweep`, `fllab.build_report`,
# plus `fllab.load_results`, which reads any results into a pandas DataFrame
# (`pip install 'fllab[analysis]'`).

# %%
import tempfile
from pathlib import Path

import fllab

work = Path(tempfile.mkdtemp(prefix="fllab-api-"))
scenario = {
    "name": "api_demo",
    "seed": 0,
    "threads": 1,
    "task": {"dataset": "digits", "model": {"name": "mlp", "hidden": [32]}},
    "federation": {"num_clients": 8, "rounds": 4, "partition": "iid"},
    "algorithm": {"name": "fedavg", "local_epochs": 1, "batch_size": 32, "lr": 0.5},
    "evaluation": {"baseline": True},
}

# %% [markdown]
# ## One run
# `fllab.run` takes a YAML path, a mapping or a loaded `Scenario`, and `overrides` like `--set`.
# It returns the run directory and its summary; the report is `run_dir / "report.html"`.

# %%
run_dir, summary = fllab.run(scenario, work / "one", overrides=["federation.rounds=2"])
print(run_dir / "report.html", summary["metrics"]["utility.accuracy"])

# %% [markdown]
# ## A sweep with seeds
# A scenario with a `sweep` block is refused by `fllab.run` (it would otherwise run one cell and
# hide the rest): `fllab.sweep` runs every cell, skips finished ones on a re-run, and writes
# `results.csv`, `aggregate.csv` (mean, std and 95% CI per setting) and a report.

# %%
swept = {**scenario, "sweep": {
    "cases": {"attack": {"none": {"attacks": []},
                         "sign_flip": {"attacks": [{"name": "sign_flip", "fraction": 0.25, "scale": 3.0}]}},
              "aggregator": {"mean": {"aggregator": "mean"}, "median": {"aggregator": "median"}}},
    "seeds": [0, 1, 2]}}
sweep_dir = fllab.sweep(swept, work / "sweep")

# %% [markdown]
# ## Results as DataFrames
# One row per cell, swept values as plain columns (`attack`, `aggregator`), metrics by their dotted names.

# %%
cells = fllab.load_results(sweep_dir)
print(cells[["attack", "aggregator", "seed", "utility.accuracy"]])

# %% [markdown]
# One row per setting from `aggregate.csv`: `n` seeds, and each metric's mean, std and the
# half-width of its 95% Student-t confidence interval.

# %%
settings = fllab.load_results(sweep_dir, aggregate=True)
print(settings[["attack", "aggregator", "n", "utility.accuracy.mean", "utility.accuracy.ci95"]])

# %% [markdown]
# Any pandas analysis follows, e.g. what the attack costs under each aggregator:

# %%
table = settings.pivot(index="aggregator", columns="attack", values="utility.accuracy.mean")
print((table["none"] - table["sign_flip"]).rename("accuracy lost to sign_flip"))
print("report:", sweep_dir / "report.html")

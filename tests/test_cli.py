"""CLI contract: exit codes 0/2, one readable error line naming the field, nothing half-written."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fllab.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_lists_every_command():
    res = invoke("--help")
    assert res.exit_code == 0
    for cmd in ("run", "sweep", "validate", "list", "describe", "report"):
        assert cmd in res.output


def test_run_writes_the_run_directory(tmp_path, tiny, write_yaml):
    out = tmp_path / "run"
    res = invoke("run", str(write_yaml(tiny)), "--out", str(out), "--quiet", "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["status"] == "ok"
    for name in ("config.resolved.yaml", "env.json", "rounds.jsonl", "summary.json", "partition.json", "report.md", "report.html"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"name", "seed", "status", "metrics", "model"}
    assert 0.0 <= summary["metrics"]["utility.accuracy"] <= 1.0
    assert summary["metrics"]["run.seconds"] > 0
    assert len((out / "rounds.jsonl").read_text().splitlines()) == tiny["federation"]["rounds"]
    assert not (tmp_path / "run.partial").exists()


def test_existing_run_dir_is_refused_without_overwrite(tmp_path, tiny, write_yaml):
    out = tmp_path / "run"
    path = str(write_yaml(tiny))
    assert invoke("run", path, "--out", str(out), "-q").exit_code == 0
    res = invoke("run", path, "--out", str(out), "-q")
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    assert invoke("run", path, "--out", str(out), "-q", "--overwrite").exit_code == 0


def _unknown_top_key(d):
    d["federaton"] = d.pop("federation")


def _wrong_type(d):
    d["federation"]["rounds"] = "ten"


def _near_miss_component(d):
    d["algorithm"]["name"] = "fedavgg"


def _impossible_sizes(d):
    d["federation"]["clients_per_round"] = 9


def _more_clients_than_examples(d):
    d["federation"]["num_clients"] = 5000


def _missing_data_folder(d):
    d["task"]["dataset"] = {"name": "fashion_mnist", "root": "/nonexistent/fmnist"}


def _unknown_component_param(d):
    d["algorithm"]["lrr"] = 0.1


def _zero_rounds(d):
    d["federation"]["rounds"] = 0


def _bad_fraction(d):
    d["attacks"] = [{"name": "label_flip", "fraction": 1.5}]


def _empty_sweep_values(d):
    d["sweep"] = {"grid": {"algorithm.lr": []}}


def _bad_partition_param(d):
    d["federation"]["partition"] = {"name": "dirichlet", "alpha": -1}


def _unknown_model(d):
    d["task"]["model"] = "resnet81"


def _too_many_attackers(d):
    d["attacks"] = [{"name": "sign_flip", "fraction": 0.9}, {"name": "label_flip", "fraction": 0.5}]


MUTATIONS = [
    (_unknown_top_key, "federaton: unknown key; did you mean 'federation'"),
    (_wrong_type, "federation.rounds: "),
    (_near_miss_component, "did you mean 'fedavg'"),
    (_impossible_sizes, "clients_per_round (9) must be at most num_clients (4)"),
    (_more_clients_than_examples, "federation.num_clients"),
    (_missing_data_folder, "task.dataset.root: no Fashion-MNIST IDX files in /nonexistent/fmnist"),
    (_unknown_component_param, "algorithm.lrr: unknown key; did you mean 'lr'"),
    (_zero_rounds, "federation.rounds: Input should be greater than 0"),
    (_bad_fraction, "attacks.0.fraction"),
    (_empty_sweep_values, "sweep.grid: entry 'algorithm.lr' has no values"),
    (_bad_partition_param, "federation.partition.alpha"),
    (_unknown_model, "unknown model 'resnet81'; did you mean 'resnet18'"),
    (_too_many_attackers, "no honest client"),
]


@pytest.mark.parametrize("mutate,expected", MUTATIONS, ids=[m.__name__.strip("_") for m, _ in MUTATIONS])
def test_malformed_scenarios_exit_2_with_one_line(tmp_path, tiny, write_yaml, mutate, expected):
    mutate(tiny)
    out = tmp_path / "out"
    res = invoke("run", str(write_yaml(tiny)), "--out", str(out), "-q")
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in res.output
    assert not out.exists() and not (tmp_path / "out.partial").exists()


FILES = [
    ("- a\n- b\n", "a scenario must be a YAML mapping, got a list"),
    ("", "the file is empty"),
    ("name: t\ntask: {dataset: digits\n", "not valid YAML at line"),
    ("just a string\n", "must be a YAML mapping, got a str"),
]


@pytest.mark.parametrize("text,expected", FILES, ids=["list", "empty", "syntax", "scalar"])
def test_malformed_files_exit_2(write_yaml, text, expected):
    res = invoke("validate", str(write_yaml(text)))
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and expected in res.stderr


def test_missing_scenario_file_exits_2(tmp_path):
    res = invoke("validate", str(tmp_path / "nope.yaml"))
    assert res.exit_code == 2 and "does not exist" in res.stderr


@pytest.mark.parametrize(
    "override,expected",
    [
        ("rounds", "expected PATH=VALUE"),
        ("federation..rounds=3", "empty path segment"),
        ("federation.rounds.x=3", "federation.rounds is a value"),
        ("attacks.3.fraction=0.1", "index 3 out of range"),
        ("federation.nmu_clients=3", "federation.nmu_clients: unknown key; did you mean 'num_clients'"),
    ],
)
def test_bad_set_paths_exit_2(tiny, write_yaml, override, expected):
    tiny["attacks"] = [{"name": "sign_flip", "fraction": 0.25}]
    res = invoke("validate", str(write_yaml(tiny)), "--set", override)
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and expected in res.stderr, res.stderr


def test_set_overrides_reach_the_resolved_config(tiny, write_yaml):
    res = invoke("validate", str(write_yaml(tiny)), "--set", "federation.rounds=7", "--set", "algorithm.lr=0.5", "--json")
    assert res.exit_code == 0, res.output
    resolved = json.loads(res.stdout)["resolved"]
    assert resolved["federation"]["rounds"] == 7 and resolved["algorithm"]["lr"] == 0.5
    assert resolved["algorithm"]["batch_size"] == 32  # defaults are filled in


def test_list_and_describe():
    res = invoke("list", "--json")
    table = json.loads(res.stdout)
    assert {"fedavg", "fedsgd"} <= set(table["algorithm"]) and "digits" in table["dataset"]
    res = invoke("describe", "fedavg", "--json")
    info = json.loads(res.stdout)
    assert info["kind"] == "algorithm" and info["sends"] == "delta"
    assert info["params"]["lr"]["default"] == 0.05 and info["references"]
    res = invoke("describe", "fedavgg")
    assert res.exit_code == 2 and "did you mean 'fedavg'" in res.stderr


def test_report_rebuilds_without_training(tmp_path, tiny, write_yaml):
    out = tmp_path / "run"
    assert invoke("run", str(write_yaml(tiny)), "--out", str(out), "-q").exit_code == 0
    (out / "report.html").unlink()
    res = invoke("report", str(out))
    assert res.exit_code == 0 and (out / "report.html").is_file()
    assert invoke("report", str(tmp_path)).exit_code == 2


def test_validate_counts_skipped_cells_like_sweep(tiny, write_yaml):
    """A sweep with skip_invalid validates when some cells are refused (as `fllab sweep` would skip
    them), and fails with exit 2 without skip_invalid or when every cell is refused."""
    tiny["sweep"] = {"skip_invalid": True, "cases": {"agg": {
        "mean": {"aggregator": "mean"},
        "krum_f_too_large": {"aggregator": {"name": "krum", "f": 50}},
    }}}
    res = invoke("validate", str(write_yaml(tiny)), "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["cells"] == 2 and len(out["skipped"]) == 1
    assert out["skipped"][0]["cell"] == {"agg": "krum_f_too_large"} and "aggregator" in out["skipped"][0]["reason"]
    tiny["sweep"]["skip_invalid"] = False
    assert invoke("validate", str(write_yaml(tiny, "strict.yaml"))).exit_code == 2
    tiny["sweep"] = {"skip_invalid": True, "cases": {"agg": {"krum_f_too_large": {"aggregator": {"name": "krum", "f": 50}}}}}
    res = invoke("validate", str(write_yaml(tiny, "all_refused.yaml")))
    assert res.exit_code == 2 and "every one of the 1 sweep cells is refused" in res.output


def test_finished_run_holds_its_final_model(tmp_path, tiny, write_yaml):
    """model.pt is the final global model: loaded into the network its config describes, it
    scores the run's own accuracy; a file that does not match its recorded SHA-256 is refused."""
    import hashlib

    import torch
    import yaml as _yaml

    from fllab.errors import ConfigError
    from fllab.rundir import MODEL_FILE, load_model
    from fllab.scenario.build import resolve
    from fllab.scenario.loader import validate_schema
    from fllab.training.engine import Engine
    from fllab.training.local import evaluate

    out = tmp_path / "run"
    assert invoke("run", str(write_yaml(tiny)), "--out", str(out), "-q").exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    blob = (out / MODEL_FILE).read_bytes()
    assert summary["model"] == {"file": MODEL_FILE, "sha256": hashlib.sha256(blob).hexdigest()}
    state = load_model(out)
    assert state.keys() == torch.load(out / MODEL_FILE, weights_only=True).keys()
    engine = Engine(resolve(validate_schema(_yaml.safe_load((out / "config.resolved.yaml").read_text()))))
    engine.prepare()
    model = engine.federation.server_model
    model.load_state_dict(state)
    assert evaluate(model, engine.federation.test)["accuracy"] == summary["metrics"]["utility.accuracy"]
    (out / MODEL_FILE).write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(ConfigError, match="does not match the SHA-256"):
        load_model(out)
    with pytest.raises(ConfigError, match="not a finished run"):
        load_model(tmp_path)


def test_lira_reference_training_shows_progress_unless_quiet(tmp_path, tiny, write_yaml):
    """The minutes a LiRA cell spends on its reference models have a bar on stderr (none with --quiet)."""
    tiny["attacks"] = [{"name": "lira", "members": 40, "num_models": 2, "epochs": 1, "mode": "offline"}]
    path = str(write_yaml(tiny))
    loud = invoke("run", path, "--out", str(tmp_path / "loud"))
    assert loud.exit_code == 0 and "2 reference models" in loud.stderr, loud.stderr
    quiet = invoke("run", path, "--out", str(tmp_path / "quiet"), "-q")
    assert quiet.exit_code == 0 and "reference models" not in quiet.stderr

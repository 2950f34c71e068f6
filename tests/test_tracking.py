"""Experiment tracking: a real run logged to MLflow (local file store) and TensorBoard event files."""
from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

import fllab
from fllab.cli import main
from fllab.errors import ConfigError
from fllab.io import read_jsonl
from fllab.tracking import from_config, from_flag


def _tracked_run(tiny, tmp_path, tracking):
    tiny["tracking"] = tracking
    out = tmp_path / "run"
    _, summary = fllab.run(tiny, out)
    return out, summary


def test_mlflow_gets_params_per_round_metrics_summary_and_report(tiny, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = (tmp_path / "mlruns").as_uri()
    out, summary = _tracked_run(tiny, tmp_path, {"mlflow": {"tracking_uri": uri, "experiment": "study"}})
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["algorithm.lr"] == "0.1" and run.data.params["task.dataset.name"] == "digits"
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    rounds = read_jsonl(out / "rounds.jsonl")
    assert [(m.step, m.value) for m in history] == [(r["round"], pytest.approx(r["test_accuracy"])) for r in rounds]
    assert run.data.metrics["utility.accuracy"] == pytest.approx(summary["metrics"]["utility.accuracy"])
    assert {"report.html", "report.md", "summary.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "tracking" not in (out / "config.resolved.yaml").read_text()  # tracking changes no result


def test_tensorboard_event_files_hold_the_round_curves(tiny, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, summary = _tracked_run(tiny, tmp_path, {"tensorboard": True})
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    rounds = read_jsonl(out / "rounds.jsonl")
    assert [(s.step, s.value) for s in events.Scalars("test_accuracy")] == [
        (r["round"], pytest.approx(r["test_accuracy"], rel=1e-6)) for r in rounds]
    final = events.Scalars("summary/utility.accuracy")[-1].value
    assert final == pytest.approx(summary["metrics"]["utility.accuracy"], rel=1e-6)
    assert "config/text_summary" in events.Tags()["tensors"]


def test_track_flag_adds_backends_and_rejects_unknown_ones(tmp_path, tiny, write_yaml):
    pytest.importorskip("tensorboard")
    assert from_flag("mlflow, tensorboard") == {"mlflow": {}, "tensorboard": {}}
    path = write_yaml(tiny)
    res = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "r"), "-q", "--track", "wandb"])
    assert res.exit_code == 2 and "--track: unknown backend wandb; allowed: mlflow, tensorboard" in res.output
    res = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "r"), "-q", "--track", "tensorboard", "--json"])
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads(res.output)["status"] == "ok"


def test_nothing_tracked_without_the_block_and_a_missing_package_is_a_config_error(monkeypatch):
    assert from_config(None) is None and from_config({}) is None
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"tracking needs mlflow: pip install 'fllab\[tracking\]'"):
        from_config({"mlflow": True})

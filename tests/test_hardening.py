"""Issue 10's reproducers, one test each (bounded so the suite stays fast): no data loss, one line
for every bad input, bounded resources, safe concurrent runs.  The fuzzer over every shipped
scenario is in test_hardening_fuzz.py."""
from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import fllab.runner  # noqa: F401  (imported up front: the timed refusals below exclude torch's import)
from fllab.cli import main
from fllab.rundir import MARKER, Claim, writing_run

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)


def one_line(res, code: int, *expected: str) -> str:
    """The result exited ``code`` with exactly one ``error:`` line holding every ``expected``."""
    assert res.exit_code == code, res.output
    lines = [line for line in res.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in res.output
    return lines[0]


def tree(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


# ------------------------------------------------------------------------ 1. data loss
@pytest.mark.parametrize("out", [".", ""], ids=["dot", "empty"])
def test_overwrite_never_empties_the_working_directory(tmp_path, tiny, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    Path("scenario.yaml").write_text(yaml.safe_dump(tiny))
    Path("notes.txt").write_text("mine")
    before = tree(tmp_path)
    one_line(invoke("run", "scenario.yaml", "--out", out, "--overwrite", "-q"), 2, "refusing to replace")
    assert tree(tmp_path) == before


def test_overwrite_refuses_a_directory_fllab_did_not_write(tmp_path, tiny, write_yaml):
    victim = tmp_path / "data"
    victim.mkdir()
    (victim / "precious.csv").write_text("1,2\n")
    line = one_line(invoke("run", write_yaml(tiny), "--out", victim, "--overwrite", "-q"), 2, "not written by fllab", MARKER)
    assert str(victim) in line and (victim / "precious.csv").read_text() == "1,2\n"
    assert not (tmp_path / "data.partial").exists()


def test_overwrite_refuses_home_and_a_folder_holding_the_scenario(tmp_path, tiny, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / MARKER).write_text("{}")  # even a marker does not make $HOME replaceable
    monkeypatch.setenv("HOME", str(home))
    scenario = home / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(tiny))
    one_line(invoke("run", scenario, "--out", home, "--overwrite", "-q"), 2, "home directory")
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    (run_dir / MARKER).write_text("{}")
    inner = run_dir / "scenario.yaml"
    inner.write_text(yaml.safe_dump(tiny))
    one_line(invoke("run", inner, "--out", run_dir, "--overwrite", "-q"), 2, "holds the scenario file")
    assert scenario.is_file() and inner.is_file()


def test_overwrite_replaces_a_run_only_when_the_new_one_is_whole(tmp_path, tiny, write_yaml):
    out = tmp_path / "run"
    path = write_yaml(tiny)
    assert invoke("run", path, "--out", out, "-q").exit_code == 0
    assert (out / MARKER).is_file()
    first = json.loads((out / "summary.json").read_text())
    tiny["federation"]["rounds"] = 1
    res = invoke("run", write_yaml(tiny, "one.yaml"), "--out", out, "-q", "--overwrite", "--json")
    assert res.exit_code == 0, res.output
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 1 and first["status"] == "ok"
    assert not (tmp_path / "run.partial").exists()


# ------------------------------------------------------------------------ 2. YAML bounds
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)


def test_billion_laughs_is_refused_fast(write_yaml):
    text = "unknown_key:\n" + "".join("  " + line + "\n" for line in LAUGHS.splitlines())
    assert len(text.encode()) < 1000
    start = time.perf_counter()
    one_line(invoke("validate", write_yaml(text)), 2, "expands to more than", "FLLAB_MAX_SCENARIO_NODES")
    assert time.perf_counter() - start < 5


def test_node_limit_is_overridable(write_yaml):
    text = "a: &a [1, 2, 3, 4]\nb: [*a, *a, *a, *a, *a, *a]\n"
    one_line(invoke("validate", write_yaml(text), env={"FLLAB_MAX_SCENARIO_NODES": "20"}), 2, "more than 20 nodes")
    res = invoke("validate", write_yaml(text))
    one_line(res, 2, "a: unknown key")  # within the default limit: schema errors as usual


@pytest.mark.parametrize("text,expected", [
    ("[" * 20_000 + "]" * 20_000, "nesting deeper than 64 levels"),
    ("a: &x [1, *x]\n", "recursive alias"),
    ("name: a\nseed: 1\nname: b\n", "duplicate key name at lines 1 and 3"),
    ("seed: " + "9" * 5000 + "\n", "unreadable value"),
    ("name: !!binary Zm9v\n", "name: Input should be a valid string"),
    ("\x00name: x\n", "special characters are not allowed"),
], ids=["deep", "recursive", "duplicate", "huge-int", "binary", "nul"])
def test_malformed_documents_are_one_line(write_yaml, text, expected):
    one_line(invoke("validate", write_yaml(text)), 2, expected)


def test_circular_alias_through_set(tiny, write_yaml):
    one_line(invoke("validate", write_yaml(tiny), "--set", "description=&x [*x]"), 2, "recursive alias")


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "big"])
def test_only_bounded_regular_files_are_read(tmp_path, target):
    if target == "fifo":
        path = tmp_path / "pipe.yaml"
        os.mkfifo(path)  # opening it would block forever
        expected = "not a regular file"
    elif target == "big":
        path = tmp_path / "big.yaml"
        path.write_text("# " + "x" * (1 << 20) + "\n")
        expected = "larger than 1,048,576 bytes"
    else:
        path, expected = Path(target), "not a regular file"
    one_line(invoke("validate", path), 2, expected)


# ------------------------------------------------------------------------ 3. concurrency
def test_a_locked_run_directory_is_refused_naming_the_holder(tmp_path, tiny, write_yaml):
    out = tmp_path / "run"
    partial = tmp_path / "run.partial"
    partial.mkdir()
    with Claim(partial, "run"):
        line = one_line(invoke("run", write_yaml(tiny), "--out", out, "-q"), 2, "is being written by fllab pid", str(os.getpid()))
    assert "--out" in line and not out.exists()
    sweep = copy.deepcopy(tiny)
    sweep["sweep"] = {"grid": {"algorithm.lr": [0.1]}}
    (tmp_path / "sw").mkdir()
    with Claim(tmp_path / "sw", "sweep"):
        one_line(invoke("sweep", write_yaml(sweep), "--out", tmp_path / "sw", "-q"), 2, "is being written by")
    assert invoke("run", write_yaml(tiny), "--out", out, "-q").exit_code == 0  # released: runs


def test_two_concurrent_runs_into_one_directory(tmp_path, tiny, write_yaml):
    """Two real processes: one writes the run, the other exits 2 with one line; the directory
    holds one whole run (no interleaved rounds.jsonl)."""
    tiny["federation"]["rounds"] = 3
    path, out = write_yaml(tiny), tmp_path / "run"
    cmd = [sys.executable, "-m", "fllab.cli", "run", str(path), "--out", str(out), "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert loser.count("\n") == 1 and ("being written by" in loser or "already exists" in loser), loser
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 3
    assert not (tmp_path / "run.partial").exists()


# ------------------------------------------------------------------------ 4. sweep size
def test_a_huge_grid_is_refused_before_it_is_materialised(tiny, write_yaml):
    axis = list(range(100))
    tiny["sweep"] = {"grid": {"seed": axis, "algorithm.batch_size": [b + 1 for b in axis], "evaluation.every": [e + 1 for e in axis]}}
    start = time.perf_counter()
    one_line(invoke("validate", write_yaml(tiny)), 2, "1,000,000 cells exceed the limit of 10,000", "FLLAB_MAX_SWEEP_CELLS")
    assert time.perf_counter() - start < 10


# ------------------------------------------------------------------------ 5. numbers
@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["algorithm"].update(lr=float("inf")), "algorithm.lr: Input should be a finite number"),
    (lambda d: d["algorithm"].update(lr=float("nan")), "algorithm.lr: Input should be a finite number"),
    (lambda d: d["algorithm"].update(local_epochs=float("inf")), "algorithm.local_epochs: Input should be a finite number"),
    (lambda d: d["algorithm"].update(local_epochs=1e308), "algorithm.local_epochs: out of the float32 range"),
    (lambda d: d.update(threads=2**64), "threads: integer out of range"),
    (lambda d: d.update(threads=10**4), "threads: Input should be less than or equal to 1024"),
    (lambda d: d["task"]["model"].update(hidden=[512e9]), "task.model.hidden.0: Input should be a valid integer"),
    (lambda d: d["federation"].update(rounds=True), "federation.rounds: Input should be a valid integer (got True)"),
    (lambda d: d["algorithm"].update(lr=True), "algorithm.lr: Input should be a valid number"),
    (lambda d: d.update(sweep={"seeds": [-1]}), "sweep.seeds.0: Input should be greater than or equal to 0"),
    (lambda d: d.update(seed=2**70), "seed: integer out of range"),
    (lambda d: d["algorithm"].update(lr=1e300), "algorithm.lr: out of the float32 range"),
], ids=["lr-inf", "lr-nan", "epochs-inf", "epochs-1e308", "threads-2**64", "threads-10000", "hidden-float", "rounds-true", "lr-true",
        "negative-seed", "seed-2**70", "lr-1e300"])
def test_absurd_numbers_are_refused_by_validate(tiny, write_yaml, mutate, expected):
    mutate(tiny)
    one_line(invoke("validate", write_yaml(tiny), "--no-data"), 2, expected)


def test_a_scalar_file_names_its_type_with_the_right_article(write_yaml):
    one_line(invoke("validate", write_yaml("7\n")), 2, "a scenario must be a YAML mapping, got an int")


def test_set_yes_is_no_round_count(tiny, write_yaml):
    one_line(invoke("validate", write_yaml(tiny), "--set", "federation.rounds=yes"), 2, "federation.rounds: Input should be a valid integer")


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["algorithm"].update(local_epochs=1e30), "local optimizer steps"),
    (lambda d: d["task"]["model"].update(hidden=[512 * 10**9]), "memory"),
    (lambda d: d.update(defenses=[{"name": "rqm", "m": 8 * 10**9}]), "rqm"),
], ids=["epochs-1e30", "hidden-512e9", "rqm-m-8e9"])
def test_work_and_memory_estimates_refuse_before_training(tmp_path, tiny, write_yaml, mutate, expected):
    mutate(tiny)
    path = write_yaml(tiny)
    line = one_line(invoke("validate", path), 2, expected)
    assert line == one_line(invoke("run", path, "--out", tmp_path / "run", "-q"), 2)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_memory_limit_names_the_estimate_and_is_overridable(tiny, write_yaml):
    path = write_yaml(tiny)
    one_line(invoke("validate", path, env={"FLLAB_MEMORY_LIMIT": "1K"}), 2, "would need about", "FLLAB_MEMORY_LIMIT")
    assert invoke("validate", path, env={"FLLAB_MEMORY_LIMIT": "1G"}).exit_code == 0


def test_a_diverging_run_is_reported_as_diverged(tmp_path, tiny, write_yaml):
    tiny["algorithm"]["lr"] = 1e30
    tiny["federation"]["rounds"] = 1
    with pytest.warns(RuntimeWarning, match="tiny: training diverged"):
        res = invoke("run", write_yaml(tiny), "--out", tmp_path / "run", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_more_threads_than_cores_are_cut_with_a_warning(tiny, write_yaml):
    tiny["threads"] = 1000
    with pytest.warns(RuntimeWarning, match="threads: 1000 is more than the"):
        assert invoke("validate", write_yaml(tiny)).exit_code == 0


def test_cli_warnings_are_one_line(tmp_path, tiny, write_yaml):
    """Through the console entry (warnings formatted as one line each)."""
    tiny["threads"] = 1000
    cmd = [sys.executable, "-c", "from fllab.cli import entry; entry()", "validate", str(write_yaml(tiny))]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith("warning: threads: 1000 is more than the") and res.stderr.count("\n") == 1, res.stderr


# ------------------------------------------------------------------------ 6. validate == run
def test_validate_refuses_an_unreachable_dp_budget_like_run(tmp_path, tiny, write_yaml):
    tiny["defenses"] = [{"name": "dp_sgd", "target_epsilon": 1e-6, "accountant": "rdp"}]
    path = write_yaml(tiny)
    line = one_line(invoke("validate", path), 2, "dp_sgd.")
    assert line == one_line(invoke("run", path, "--out", tmp_path / "run", "-q"), 2)
    assert list(tmp_path.iterdir()) == [path]  # nothing written, not even a .partial


def test_validate_refuses_missing_lpips_weights_like_run(tmp_path, monkeypatch, write_yaml):
    import fllab.metrics.image as image

    monkeypatch.setattr(image, "_LPIPS_MODELS", {})
    scenario = yaml.safe_load((ROOT / "scenarios" / "inversion" / "dlg_lenet.yaml").read_text())
    path = write_yaml(scenario)
    env = {"FLLAB_CACHE": str(tmp_path / "empty-cache")}
    line = one_line(invoke("validate", path, env=env), 1, "LPIPS AlexNet trunk weights not found")
    assert line == one_line(invoke("run", path, "--out", tmp_path / "run", "-q", env=env), 1)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


# ------------------------------------------------------------------------ 7. OS errors
def test_unusable_output_paths_are_one_line(tmp_path, tiny, write_yaml):
    path = write_yaml(tiny)
    (tmp_path / "file").write_text("x")
    one_line(invoke("run", path, "--out", tmp_path / "file" / "run", "-q"), 2, "cannot create", "Not a directory")
    one_line(invoke("run", path, "--out", "/proc/fllab-run", "-q"), 2, "/proc/fllab-run")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    one_line(invoke("run", path, "--out", tmp_path / "link", "-q"), 2, "symbolic link")
    one_line(invoke("run", path, "--out", "/dev/null", "-q", "--overwrite"), 2, "/dev/null exists and is not a directory")
    long = tmp_path / "runs" / ("x" * 300)
    one_line(invoke("run", path, "--out", long, "-q"), 2, "File name too long")
    assert not (tmp_path / "runs").exists()  # the parent it created on the way is gone again


def test_disk_full_is_one_line_naming_the_unfinished_run(tmp_path, tiny, write_yaml, monkeypatch):
    import errno

    import fllab.runner as runner

    def full(path, record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(runner, "append_jsonl", full)
    line = one_line(invoke("run", write_yaml(tiny), "--out", tmp_path / "run", "-q"), 1, "No space left on device")
    assert "run.partial" in line and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ 8. messages
def test_a_huge_bad_value_is_not_echoed_whole(tiny, write_yaml):
    tiny["federation"]["rounds"] = "9" * 5_000_000
    env = {"FLLAB_MAX_SCENARIO_BYTES": "10M"}  # raised: the 5 MB value reaches the schema
    line = one_line(invoke("validate", write_yaml(tiny), "--no-data", env=env), 2, "federation.rounds", "characters")
    assert len(line) < 400


def test_set_on_an_empty_list_says_so(tiny, write_yaml):
    tiny["attacks"] = []
    one_line(invoke("validate", write_yaml(tiny), "--set", "attacks.0.fraction=0.1"), 2, "the list is empty")


def test_a_single_run_error_has_no_sweep_cell_prefix(tiny, write_yaml):
    tiny["aggregator"] = {"name": "krum", "f": 3}
    line = one_line(invoke("validate", write_yaml(tiny), "--no-data"), 2, "aggregator")
    assert "sweep cell" not in line


# ------------------------------------------------------------------------ 9. smaller
def test_a_sweep_with_infinity_can_be_rerun(tmp_path):
    from fllab.runner import dump_yaml, same_sweep

    data = {"name": "s", "sweep": {"grid": {"x": [1.0, float("inf")]}}}
    assert same_sweep(yaml.safe_load(dump_yaml(data)), data)
    from fllab.io import atomic_write_yaml

    atomic_write_yaml(tmp_path / "s.yaml", data)
    assert same_sweep(yaml.safe_load((tmp_path / "s.yaml").read_text()), data)


def test_written_files_have_normal_permissions(tmp_path):
    from fllab.io import atomic_write_text

    old = os.umask(0o022)
    try:
        (tmp_path / "plain").write_text("x")
        atomic_write_text(tmp_path / "atomic", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "atomic").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_a_plugin_that_exits_at_import_is_skipped(tmp_path):
    dist = tmp_path / "rude_plugin-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rude-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[fllab.plugins]\nexits = rude_exit\ninterrupts = rude_interrupt\n")
    (tmp_path / "rude_exit.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "rude_interrupt.py").write_text("raise KeyboardInterrupt\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "FLLAB_CACHE": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-m", "fllab.cli", "list", "aggregator"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "krum" in res.stdout
    assert "plugin 'exits'" in res.stderr and "SystemExit" in res.stderr and "plugin 'interrupts'" in res.stderr


def test_report_on_a_non_utf8_run_is_one_line(tmp_path, tiny, write_yaml):
    out = tmp_path / "run"
    assert invoke("run", write_yaml(tiny), "--out", out, "-q").exit_code == 0
    (out / "config.resolved.yaml").write_bytes(b"name: \xff\xfe\n")
    one_line(invoke("report", out), 1, "config.resolved.yaml", "not UTF-8")


def test_writing_run_keeps_a_failed_partial_and_the_old_run(tmp_path):
    out = tmp_path / "run"
    with writing_run(out, overwrite=False) as partial:
        (partial / "summary.json").write_text("{}")
    with pytest.raises(RuntimeError):
        with writing_run(out, overwrite=True) as partial:
            raise RuntimeError("crash mid-run")
    assert (out / "summary.json").is_file() and (tmp_path / "run.partial").is_dir()


def test_list_starts_without_importing_the_components(tmp_path):
    """issue 11: `fllab list` answers from the catalog cache (no torch import) once it is warm,
    and the cache follows the installed modules."""
    code = (
        "import sys; from click.testing import CliRunner; from fllab.cli import main; "
        "res = CliRunner().invoke(main, ['list', 'aggregator']); assert res.exit_code == 0 and 'krum' in res.output; "
        "print('torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLLAB_CACHE": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120) for _ in range(2)]
    assert [r.stdout.strip() for r in runs] == ["True", "False"], [r.stderr for r in runs]
    assert len(list((tmp_path / "catalog").glob("*.json"))) == 1


def test_a_gzip_bomb_idx_file_is_refused_after_its_header(tmp_path):
    import gzip

    import numpy as np

    from fllab.data.idx import read_idx
    from fllab.data.integrity import DataIntegrityError

    header = bytes([0, 0, 8, 2]) + np.array([2, 3], ">u4").tobytes()
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(header + bytes(6) + bytes(64 << 20)))  # 64 MiB behind 6 bytes
    start = time.perf_counter()
    with pytest.raises(DataIntegrityError, match="inflates past the 6 bytes its IDX header announces"):
        read_idx(tmp_path / "bomb.gz")
    assert time.perf_counter() - start < 2


def test_an_offline_download_is_one_line(tmp_path, tiny, write_yaml, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    tiny["task"]["dataset"] = {"name": "mnist", "root": str(tmp_path / "mnist"), "download": True}
    path = write_yaml(tiny)
    line = one_line(invoke("validate", path), 1, "could not download", "name resolution")
    assert line == one_line(invoke("run", path, "--out", tmp_path / "run", "-q"), 1)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_validate_without_data_refuses_dp_sgd_on_batch_norm_like_run(tmp_path, tiny, write_yaml):
    """issue 11: the model is checked against the defenses on the meta device, from the dataset's
    signature, with the line `run` prints."""
    tiny["task"]["model"] = {"name": "convnet", "norm": "batch", "width": 4, "hidden": 8}
    tiny["defenses"] = ["dp_sgd"]
    path = write_yaml(tiny)
    line = one_line(invoke("validate", path, "--no-data"), 2, "dp_sgd needs per-sample gradients")
    assert line == one_line(invoke("run", path, "--out", tmp_path / "run", "-q"), 2)


def test_a_corrupt_lpips_file_is_one_line(tmp_path, monkeypatch, write_yaml):
    import fllab.metrics.image as image

    monkeypatch.setattr(image, "_LPIPS_MODELS", {})
    trunk = tmp_path / "cache" / "lpips" / "alexnet_trunk.pt"
    trunk.parent.mkdir(parents=True)
    trunk.write_bytes(b"PK\x03\x04 not a checkpoint\n\n\n")
    scenario = yaml.safe_load((ROOT / "scenarios" / "inversion" / "dlg_lenet.yaml").read_text())
    one_line(invoke("validate", write_yaml(scenario), env={"FLLAB_CACHE": str(tmp_path / "cache")}), 1, str(trunk), "--force")


def test_a_sweep_adds_only_to_its_own_directory(tmp_path, tiny, write_yaml):
    tiny["federation"]["rounds"] = 1
    tiny["sweep"] = {"grid": {"algorithm.lr": [0.1]}}
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.csv").write_text("mine\n")
    one_line(invoke("sweep", write_yaml(tiny), "--out", other, "-q"), 2, "not a directory fllab wrote")
    assert (other / "results.csv").read_text() == "mine\n" and sorted(os.listdir(other)) == ["results.csv"]

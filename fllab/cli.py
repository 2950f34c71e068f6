"""The ``fllab`` command line: run, sweep, scorecard, validate, list, describe, report.

Exit codes (DESIGN.md): 0 ok, 1 runtime failure, 2 usage or config error (one line on stderr,
no traceback), 130 interrupted.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import click

from .errors import ConfigError, FllabError, shorten
from .registry import ALL_REGISTRIES


#: longest error line printed (a longer message is cut in the middle)
MAX_LINE = 1000


def _fail(message: str, code: int) -> None:
    """Print ``error: <message>`` as exactly one line and exit with ``code``."""
    click.echo(f"error: {shorten(' '.join(message.split()), MAX_LINE)}", err=True)
    sys.exit(code)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map fllab's errors to exit codes with one readable line: ConfigError 2, other FllabError
    their own code, an OS error (disk full, permission denied) 1 naming the path, Ctrl-C 130."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as err:
            _fail(str(err), 2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except FllabError as err:
            _fail(str(err), err.exit_code)
        except OSError as err:
            from .rundir import os_error_line

            _fail(os_error_line(err), 1)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


set_option = click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="override a scenario value, e.g. --set federation.rounds=5")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="no progress output on stderr")
track_option = click.option("--track", metavar="BACKENDS", help="log to mlflow and/or tensorboard, e.g. --track mlflow,tensorboard (needs fllab[tracking])")
json_option = click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON on stdout")
ray_address_option = click.option("--ray-address", metavar="ADDR", help="an existing Ray cluster (host:port, ray://host:10001 or auto); needs fllab[ray]")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fllab")
def main() -> None:
    """fllab: attack and defend federated learning from scenario files."""


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="run directory (default runs/NAME-TIME)")
@click.option("--overwrite", is_flag=True, help="replace an existing run directory")
@click.option("--resume", is_flag=True, help="continue the interrupted run at --out (default: the newest runs/NAME-*) from its last checkpoint")
@ray_address_option
@quiet_option
@track_option
@json_option
@guarded
def run(scenario: Path, overrides: tuple[str, ...], out: Path | None, overwrite: bool, resume: bool, ray_address: str | None,
        quiet: bool, track: str | None, as_json: bool) -> None:
    """Run SCENARIO and write its run directory (a scenario with a sweep block runs the sweep).
    With --ray-address the clients train on that Ray cluster (executor ray)."""
    from .runner import has_sweep, run_scenario, run_sweep
    from .scenario.loader import load_raw

    data = with_tracking(load_raw(scenario, overrides), track)
    if "scorecard" in data:
        _run_scorecard(data, out, quiet=quiet, as_json=as_json)
        return
    if has_sweep(data):
        _report_sweep(*run_sweep(data, out, quiet=quiet, ray_address=ray_address), as_json=as_json)
        return
    if ray_address:
        from .ray_sweep import check_ray

        check_ray(ray_address)
        data = on_ray_cluster(data, ray_address)
    run_dir, summary = run_scenario(data, out, quiet=quiet, overwrite=overwrite, protect=(scenario,), resume=resume)
    if as_json:
        click.echo(json.dumps({"run_dir": str(run_dir), **summary}))
    else:
        click.echo(f"{summary['name']}: {summary['status']} -> {run_dir}")
        for key, value in summary["metrics"].items():
            click.echo(f"  {key:40s} {value:.4f}" if isinstance(value, float) else f"  {key:40s} {value}")


def with_tracking(data: dict[str, Any], track: str | None) -> dict[str, Any]:
    """``data`` with the backends of ``--track`` added to its ``tracking`` block."""
    if not track:
        return data
    from .tracking import from_flag

    try:
        backends = from_flag(track)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return {**data, "tracking": {**(data.get("tracking") or {}), **backends}}


def on_ray_cluster(data: dict[str, Any], address: str) -> dict[str, Any]:
    """``data`` with its clients on the Ray cluster at ``address``: executor ray (keeping the
    scenario's other ray settings when it already names ray) with that address."""
    current = data.get("executor")
    current = {"name": current} if isinstance(current, str) else current if isinstance(current, dict) else {}
    kept = current if current.get("name") == "ray" else {}
    return {**data, "executor": {**kept, "name": "ray", "address": address}}


def _report_sweep(sweep_dir: Path, ran: int, total: int, *, as_json: bool) -> None:
    from .rundir import REPORT_HTML

    report = sweep_dir / REPORT_HTML
    if as_json:
        click.echo(json.dumps({"sweep_dir": str(sweep_dir), "cells_run": ran, "cells_total": total, "report": str(report)}))
    else:
        click.echo(f"sweep: ran {ran} of {total} cells ({total - ran} already done); results {sweep_dir / 'results.csv'}; report {report}")


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="sweep directory (default runs/NAME-sweep)")
@click.option("--jobs", type=int, default=1, show_default=True, help="cells in N local worker processes (with --executor ray: the local Ray's CPUs)")
@click.option("--executor", "where", type=str, help="where cells run: processes (this machine, --jobs) or ray (Ray tasks); default: the file's sweep.executor")
@ray_address_option
@quiet_option
@track_option
@json_option
@guarded
def sweep(scenario: Path, overrides: tuple[str, ...], out: Path | None, jobs: int, where: str | None, ray_address: str | None,
          quiet: bool, track: str | None, as_json: bool) -> None:
    """Run every cell of SCENARIO's sweep grid; finished cells are skipped on a re-run, and an
    interrupted cell continues from its last checkpoint."""
    from .runner import run_sweep
    from .scenario.loader import load_raw

    data = with_tracking(load_raw(scenario, overrides), track)
    if not data.get("sweep"):
        raise ConfigError("the scenario has no sweep block; add sweep: {grid: {...}, seeds: [...]} or use fllab run", "sweep")
    _report_sweep(*run_sweep(data, out, quiet=quiet, jobs=jobs, executor=where, ray_address=ray_address), as_json=as_json)


def _run_scorecard(data: dict[str, Any], out: Path | None, *, quiet: bool, as_json: bool) -> None:
    from .scorecard import parse, run_scorecard, terminal_table

    out_dir, rows, ran, total = run_scorecard(data, out, quiet=quiet)
    if as_json:
        click.echo(json.dumps({"scorecard_dir": str(out_dir), "cells_run": ran, "cells_total": total}))
        return
    card = parse(data).scorecard
    click.echo(terminal_table(rows, card.reference_label, card.families))
    click.echo(f"scorecard: ran {ran} of {total} runs ({total - ran} already done) -> {out_dir / 'report.html'}")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="scorecard directory (default runs/NAME-scorecard)")
@quiet_option
@json_option
@guarded
def scorecard(file: Path, overrides: tuple[str, ...], out: Path | None, quiet: bool, as_json: bool) -> None:
    """Score FILE's defense settings against its attacks; finished runs are skipped on a re-run."""
    from .scenario.loader import load_raw

    data = load_raw(file, overrides)
    if "scorecard" not in data:
        raise ConfigError("the file has no scorecard block; add scorecard: {defenses: [...], inversion: ..., ...}", "scorecard")
    _run_scorecard(data, out, quiet=quiet, as_json=as_json)


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--data/--no-data", "check_data", default=True, help="also load the data and partition it")
@json_option
@guarded
def validate(scenario: Path, overrides: tuple[str, ...], check_data: bool, as_json: bool) -> None:
    """Check SCENARIO (schema, components, capabilities, data) without training."""
    from .runner import dump_yaml, preflight, resolve_cells, torch_threads
    from .scenario.build import check_without_data
    from .scenario.loader import load_raw

    data = load_raw(scenario, overrides)
    if "scorecard" in data:
        from .scorecard.expand import expand, parse

        runs = expand(parse(data))  # resolves every run; an unusable file is the error
        refused = [{"cell": values, "reason": s} for _, values, _, s in runs if isinstance(s, str)]
        if as_json:
            click.echo(json.dumps({"ok": True, "cells": len(runs), "not_applicable": refused}))
        else:
            click.echo(f"ok: scorecard {data['name']} ({len(runs)} runs, {len(refused)} not applicable)")
        return
    cells = resolve_cells(data)  # as `fllab sweep` would: refused cells are errors unless skip_invalid
    setups = [s for *_, s in cells if not isinstance(s, str)]
    skipped = [{"cell": values, "reason": s} for _, values, _, s in cells if isinstance(s, str)]
    if not setups:
        raise ConfigError(f"every one of the {len(cells)} sweep cells is refused; first: {skipped[0]['reason']}", "sweep")
    if check_data:
        with torch_threads(setups[0].scenario.threads):
            preflight(setups[0])  # every refusal `run` makes before training, with the same line
    else:
        check_without_data(setups[0])
    if as_json:
        click.echo(json.dumps({"ok": True, "cells": len(cells), "skipped": skipped, "resolved": setups[0].resolved}))
    else:
        note = f", {len(skipped)} skipped as refused combinations" if skipped else ""
        click.echo(f"ok: {setups[0].scenario.name} ({len(cells)} cell{'s' if len(cells) != 1 else ''}{note})")
        click.echo(dump_yaml(setups[0].resolved).rstrip())


@main.command(name="list")
@click.argument("kind", required=False, type=click.Choice(sorted(ALL_REGISTRIES)))
@json_option
def list_(kind: str | None, as_json: bool) -> None:
    """List registered components (all kinds, or one KIND)."""
    from .catalog import catalog

    every = catalog()  # cached: no component import when nothing changed
    table = {k: every[k] for k in ([kind] if kind else list(ALL_REGISTRIES))}
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    for k, items in table.items():
        click.echo(f"{k}s:")
        for name, summary in items.items():
            click.echo(f"  {name:24s} {summary}")


@main.command()
@click.argument("name")
@json_option
@guarded
def describe(name: str, as_json: bool) -> None:
    """Show a component's parameters, threat model and references."""
    from .description import describe_component, render_text

    info = describe_component(name)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(render_text(info))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--x", "x_metric", help="sweeps: metric on the trade-off figure's x axis, e.g. utility.accuracy")
@click.option("--y", "y_metric", help="sweeps: metric on the y axis, e.g. inversion.psnr")
@guarded
def report(run_dir: Path, x_metric: str | None, y_metric: str | None) -> None:
    """Rebuild report.md and report.html of RUN_DIR (a run, a sweep, a scorecard or an LDP audit) without re-running."""
    from .report import rebuild

    md, html = rebuild(run_dir, x=x_metric, y=y_metric)
    click.echo(f"wrote {md} and {html}")


@main.command(name="audit-ldp")
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="output directory (default runs/NAME-TIME)")
@click.option("--overwrite", is_flag=True, help="replace an existing audit directory")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="worker processes auditing cells in parallel")
@quiet_option
@guarded
def audit_ldp(scenario: Path, out: Path | None, overwrite: bool, jobs: int, quiet: bool) -> None:
    """Audit LDP frequency oracles (mechanisms x epsilons x domain sizes) with LDP-Auditor."""
    from .privacy.ldp.grid import audit_ldp_file

    def progress(done: int, total: int, row: dict[str, Any]) -> None:
        if not quiet:
            click.echo(f"[{done}/{total}] {row['mechanism']} k={row['k']} eps={row['epsilon']:g} {row['attack']}: "
                       f"eps_emp={row['epsilon_lower_bound']:.3f} ({row['seconds']:.1f} s)", err=True)

    out_dir, metrics = audit_ldp_file(scenario, out, overwrite, progress, jobs)
    click.echo(f"{out_dir}: {metrics['ldp_audit.cells']} cells, {metrics['ldp_audit.cells_above_epsilon']} above epsilon, "
               f"max eps_emp/eps {metrics['ldp_audit.max_ratio']:.3f}, {metrics['run.seconds']:.1f} s")


@main.command()
@click.argument("target", metavar="RUN_DIR|CAPTURE", type=click.Path(path_type=Path))
@click.option("--attack", "attack_name", required=True, help="attack (inverting_gradients, update_cosine, ...) or detecting aggregator (mudhog)")
@click.option("--set", "params", multiple=True, metavar="KEY=VALUE", help="attack parameter, e.g. --set iterations=500")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), help=".npz of attacker inputs and optional ground truth")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="directory for attack.json and artefacts")
@click.option("--overwrite", is_flag=True, help="run directories: replace an --out that fllab wrote")
@json_option
@guarded
def attack(target: Path, attack_name: str, params: tuple[str, ...], data: Path | None, out: Path, overwrite: bool, as_json: bool) -> None:
    """Attack a finished run (RUN_DIR: outsider membership inference on its model.pt) or a capture
    of Flower traffic from the server's position (fllab.interop.flower).  Exit 2 (one line): not a
    run directory or capture, flwr missing, a truncated or other-version capture, bad inputs."""
    from .attacks.offline import attack_path

    summary = attack_path(target, attack_name, params, data, out, overwrite=overwrite)
    click.echo(json.dumps(summary, default=float) if as_json else "\n".join(f"{k}: {v:.4g}" for k, v in summary["metrics"].items()) or f"wrote {out}")


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """Warnings on the command line read like its errors: one line, no source excerpt."""
    return f"warning: {message}\n"


def entry() -> None:
    """Console-script entry: click's own usage errors exit 2 as well."""
    warnings.formatwarning = one_line_warning
    main()


if __name__ == "__main__":
    entry()

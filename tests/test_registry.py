"""Registries: duplicate guard, did-you-mean, typed params, third-party plugins via entry points."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fllab.errors import ConfigError
from fllab.registry import AGGREGATORS, ALL_REGISTRIES, ATTACKS, Params, Registry

ROOT = Path(__file__).resolve().parents[1]


def test_duplicate_registration_is_refused():
    reg = Registry("thing")

    @reg.register("a")
    class A:
        Params = Params

    with pytest.raises(ValueError, match="already registered"):

        @reg.register("a")
        class B:
            Params = Params


def test_component_without_params_is_refused():
    with pytest.raises(TypeError, match="Params"):
        Registry("thing").register("x")(type("X", (), {}))


def test_hooks_are_checked_when_a_component_registers():
    """An attack whose family has no driver, a hook with the wrong arguments, a missing required
    hook: each is refused at registration, naming the component; what passes records its hooks."""
    from fllab.hooks import has_hook

    def attack(family, **methods):
        return type("A", (), {"family": family, "Params": Params, **methods})

    reg = Registry("attack")
    with pytest.raises(ValueError, match="attack 'a' has family 'sabotage', which no driver runs"):
        reg.register("a")(attack("sabotage", craft_uploads=lambda self, obs: obs))
    with pytest.raises(ValueError, match="'b': hook craft_uploads must accept craft_uploads"):
        reg.register("b")(attack("poisoning", craft_uploads=lambda self: None))
    with pytest.raises(ValueError, match="'c' lacks the hook.s. poison_data or craft_uploads; rename craft to craft_uploads"):
        reg.register("c")(attack("poisoning", craft=lambda self, obs: obs))
    with pytest.raises(ValueError, match="'d' lacks the hook.s. score_canaries"):
        reg.register("d")(attack("audit", craft_canaries=lambda self, data, num_classes, gen: None))
    ok = reg.register("e")(attack("inversion", reconstruct=lambda self, obs, num_images, labels, seed: None))
    assert ok.hooks == {"reconstruct"} and has_hook(ok(), "reconstruct") and not has_hook(ok(), "reconstruct_many")
    defenses = Registry("defense")
    with pytest.raises(ValueError, match="defense 'none' lacks the hook.s. transform or wrap_fit"):
        defenses.register("none")(type("D", (), {"Params": Params}))


def test_every_attack_family_has_a_driver():
    from fllab.hooks import FAMILY_HOOKS
    from fllab.training.drivers import DRIVERS

    assert set(FAMILY_HOOKS) == set(DRIVERS)
    assert {ATTACKS[name].family for name in ATTACKS} <= set(DRIVERS)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'mean'") as err:
        AGGREGATORS.get_class("maen", "aggregator")
    assert str(err.value).startswith("aggregator: unknown aggregator 'maen'")


@pytest.mark.parametrize("kind", sorted(ALL_REGISTRIES))
def test_every_registered_component_builds_from_defaults_and_describes_itself(kind):
    from fllab.description import describe_component

    for name in ALL_REGISTRIES[kind]:
        cls = ALL_REGISTRIES[kind][name]
        fields = cls.Params.model_fields
        if any(f.is_required() for f in fields.values()):
            continue  # components with required params are covered by their own tests
        obj = ALL_REGISTRIES[kind].build({"name": name}, kind)
        assert obj.params == cls.Params()
        info = describe_component(name)
        assert info["summary"], f"{kind} {name} has no summary"
        assert (cls.__doc__ or "").strip(), f"{kind} {name} has no docstring"


def test_third_party_attack_loads_through_the_entry_point(tmp_path, tiny):
    """The example package in examples/ registers `random_direction` via the fllab.plugins group.
    We expose it to a fresh interpreter through a dist-info folder (what pip install writes)."""
    example = ROOT / "examples" / "fllab-example-plugin"
    dist = tmp_path / "fllab_example_plugin-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fllab-example-plugin\nVersion: 0.1.0\n")
    ep_file = (example / "entry_points.txt").read_text()
    (dist / "entry_points.txt").write_text(ep_file)
    code = textwrap.dedent(
        """
        import json, sys
        import fllab
        from fllab.registry import ATTACKS
        assert "random_direction" in ATTACKS, sorted(ATTACKS)
        data = json.loads(sys.argv[1])
        data["attacks"] = [{"name": "random_direction", "fraction": 0.25, "scale": 50.0}]
        _, summary = fllab.run(data, sys.argv[2])
        print(summary["metrics"]["utility.accuracy"])
        """
    )
    import json

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(example / "src"), str(ROOT)])}
    res = subprocess.run(
        [sys.executable, "-c", code, json.dumps(tiny), str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert 0.0 <= float(res.stdout.strip()) <= 1.0


def test_a_broken_plugin_is_named_and_skipped(tmp_path):
    """An entry point whose module is gone (e.g. an uninstalled editable package) warns with its
    name and leaves the built-in components usable."""
    dist = tmp_path / "broken_plugin-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[fllab.plugins]\nbroken = no_such_module_xyz:register\n")
    code = "from fllab.registry import AGGREGATORS; print('krum' in AGGREGATORS)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "True"
    assert "plugin 'broken'" in res.stderr and "no_such_module_xyz" in res.stderr
    cli = subprocess.run([sys.executable, "-m", "fllab.cli", "list", "aggregator"], capture_output=True, text=True, env=env, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stderr.startswith("warning: fllab plugin 'broken'") and cli.stderr.count("\n") == 1, cli.stderr

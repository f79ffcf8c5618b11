"""The configs ship inside the package: a wheel built from this checkout carries every config and
DeepSpeed template byte for byte, and an installed w2s loads `--config tiny` and the embedded
default with no checkout in sight."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tests.conftest import REPO

LOAD = """
import w2s, sys
from w2s.config.loading import load_config
from w2s.orchestration import embedded_default
from w2s.training.engine import DEEPSPEED_TEMPLATES
assert w2s.__file__.startswith(sys.argv[1]), w2s.__file__
print(load_config("tiny").models.strong.source, embedded_default().run.experiment, (DEEPSPEED_TEMPLATES / "zero0.json").is_file())
"""


def test_a_wheel_ships_the_configs_and_an_installed_w2s_finds_them(tmp_path):
    # built from a copy: setuptools writes build/ and *.egg-info into the tree it builds
    source = tmp_path / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(".git", ".venv", "artifacts", "build", "mlruns", "__pycache__", ".w2s"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path / "wheel")],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "wheel").glob("w2s-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name.removeprefix("w2s/config/presets/"): archive.read(name) for name in archive.namelist() if name.startswith("w2s/config/presets/")}
    expected = {str(p.relative_to(REPO / "configs")): p.read_bytes() for p in (REPO / "configs").rglob("*") if p.is_file() and p.suffix in (".yaml", ".json")}
    assert shipped == expected and "pipeline_config.yaml" in shipped and "deepspeed/zero2.json" in shipped
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out = subprocess.run([sys.executable, "-c", LOAD, str(target)], cwd=outside, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    tiny_source, experiment, templates = out.stdout.split()
    assert tiny_source == "tiny_random" and templates == "True" and experiment


def test_pyproject_states_ranges_and_the_constraints_pin_a_version_inside_each():
    import tomllib

    from packaging.requirements import Requirement

    deps = [Requirement(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    pins = {}
    for line in (REPO / "requirements" / "constraints-cpu.txt").read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[Requirement(name).name.lower().replace("_", "-")] = version
    for dep in deps:
        assert not any(spec.operator in ("==", "===") for spec in dep.specifier), f"{dep}: pyproject states ranges, pins live in requirements/"
        pinned = pins.get(dep.name.lower().replace("_", "-"))
        assert pinned is not None, f"{dep.name} is not pinned in requirements/constraints-cpu.txt"
        assert dep.specifier.contains(pinned.split("+")[0], prereleases=True), f"{dep}: the verified pin {pinned} is outside the range"
    assert "accelerate" not in {d.name for d in deps}  # nothing imports it (peft brings its own)

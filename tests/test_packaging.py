"""The project as a package: the wheel holds every package, the model card template, the shipped assets and
the console scripts; its dependencies are requirements.txt's; and the unpacked wheel, used the way an
installed copy is (away from the checkout), runs the CLI, finds its assets and renders a model card.

A fresh virtual environment per test run would take minutes; the wheel is built with the build backend that
is already installed (`--no-build-isolation`) from a copy of the sources, so the checkout stays untouched."""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "trainers", "studio")
SCRIPTS = {"ae-studio": "studio.app:main", "ae-train": "trainers.cli:main"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _source_packages() -> set[str]:
    """Every folder of Python modules under the three packages, as a dotted name."""
    found = set()
    for top in PACKAGES:
        for init in (ROOT / top).rglob("*.py"):
            if "__pycache__" not in init.parts:
                found.add(".".join(init.parent.relative_to(ROOT).parts))
    return found


def _requirement(line: str) -> tuple[str, str]:
    """(normalised name, specifier without spaces) of one requirement line."""
    line = line.split("#", 1)[0].strip()
    match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$", line)
    assert match, f"cannot read requirement {line!r}"
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    return name, ",".join(sorted(match.group(2).replace(" ", "").split(",")))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md", "docs/package.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    for name in (*PACKAGES, "assets"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    build = ["wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *build],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = out.glob("autoencoder_comparison_studio-*.whl")
    return whl


@pytest.fixture(scope="module")
def unpacked(wheel, tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site-packages")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def test_every_package_folder_is_declared() -> None:
    declared = set(_pyproject()["tool"]["setuptools"]["packages"])
    missing = _source_packages() - declared
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"


def test_wheel_holds_the_packages_template_assets_and_scripts(wheel) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = email.message_from_bytes(zf.read(f"{dist_info}/METADATA"))
    for package in _source_packages():
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    sources = {str(p.relative_to(ROOT)) for top in PACKAGES for p in (ROOT / top).rglob("*.py")}
    assert {s for s in sources if "__pycache__" not in s} <= names
    assert "trainers/hub/templates/model_card.md.j2" in names
    # assets/ ships as trainers/assets: every example input is there, and nothing outside the packages is.
    for path in (ROOT / "assets").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            assert f"trainers/assets/{path.relative_to(ROOT / 'assets').as_posix()}" in names, path
    assert not any(n.startswith(("tests/", "benchmarks/", "assets/")) or n.endswith(".pyc") for n in names)
    for script, target in SCRIPTS.items():
        assert re.search(rf"^{script}\s*=\s*{re.escape(target)}$", entry_points, re.M), entry_points
    assert metadata["Name"] == "autoencoder-comparison-studio"
    assert metadata["Requires-Python"] == ">=3.10"
    # The source repository (no index has the package) and a description that is not the Space's YAML.
    source = _pyproject()["project"]["urls"]["Source"]
    assert metadata.get_all("Project-URL") == [f"Source, {source}"]
    description = metadata.get_payload()
    assert description.startswith("# Autoencoder Comparison Studio\n") and "sdk: gradio" not in description
    assert f'pip install "git+{source}"' in description


def test_dependencies_match_requirements_txt() -> None:
    """pyproject.toml and requirements.txt name the same packages with the same floors; only torch differs
    (pinned to the CPU wheel in requirements.txt, a floor in the package)."""
    project = _pyproject()["project"]
    declared = dict(_requirement(r) for r in project["dependencies"])
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    pinned = dict(_requirement(r) for r in lines if r.split("#", 1)[0].strip())
    assert pinned.pop("torch") == "==2.13.0" and declared.pop("torch").startswith(">=")
    assert pinned == declared
    dev_lines = (ROOT / "requirements-dev.txt").read_text(encoding="utf-8").splitlines()
    dev = [r for r in dev_lines if r.split("#", 1)[0].strip()]
    assert dev[0] == "-r requirements.txt"
    extra = project["optional-dependencies"]["dev"]
    assert dict(map(_requirement, dev[1:])) == dict(map(_requirement, extra))
    # The hub client that speaks httpx2 (imported by trainers/hub/push.py), and a gradio that accepts it.
    assert declared["huggingface-hub"] == "<3,>=2.0" and "httpx2" in declared
    assert declared["gradio"] == "<7,>=6.30"


def _run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Python with only the unpacked wheel on the path (not the checkout), run from elsewhere."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), PYTHONSAFEPATH="1", GRADIO_ANALYTICS_ENABLED="False")
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


def test_unpacked_wheel_runs_the_cli_finds_assets_and_renders_a_card(unpacked, tmp_path) -> None:
    proc = _run_installed(unpacked, tmp_path, "-m", "trainers", "variants")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fragment-dae" in proc.stdout and "sar-attention" in proc.stdout
    code = """
import models, trainers, studio.context as c
from trainers.hub.model_card import TEMPLATE, CardInfo, build_model_card
from trainers.hub.source import default_source_url
print(models.__file__); print(c.ASSETS_DIR); print(TEMPLATE)
info = CardInfo(run_id="r", variant="fragment-dae", domain="fragments", kind="best", step=3, epoch=1,
    status="completed", run_config={}, model_config={}, parameters={"total": 10},
    model_class="models.fragments.FragmentAutoencoder", checkpoint_metrics={"loss": 0.5},
    source_url=default_source_url())
card = build_model_card(info)
print(card.count("pip install autoencoder-comparison-studio"), card.count('pip install "git+SOURCE"'))
"""
    source = _pyproject()["project"]["urls"]["Source"]
    code = code.replace("SOURCE", source)
    proc = _run_installed(unpacked, tmp_path, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    models_file, assets, template, index_line, source_line = proc.stdout.split()
    for path in (models_file, assets, template):
        assert Path(path).is_relative_to(unpacked), path
    assert Path(assets) == unpacked / "trainers" / "assets" and (Path(assets) / "sar").is_dir()
    # No `pip install <name>` from an index that has no such package: the card installs from the source URL
    # of the installed package's metadata.
    assert (index_line, source_line) == ("0", "1")


def test_checkpoint_folders_get_no_second_model_card(tmp_path) -> None:
    """The hub mixin's own README ("[More Information Needed]") is not written; one already there is kept."""
    from models import create_model

    model = create_model("fragment-dae")
    model.save_pretrained(tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.json", "model.safetensors"]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "README.md").write_text("my card\n")
    model.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "README.md").read_text() == "my card\n"


def test_space_runs_go_to_persistent_storage_when_present(tmp_path) -> None:
    from studio.context import space_runs_dir

    storage = tmp_path / "data"
    storage.mkdir()
    on_space = {"SPACE_ID": "alice/studio"}
    assert space_runs_dir(on_space, storage) == storage / "runs"
    assert space_runs_dir({}, storage) is None  # not a Space: ./runs as always
    assert space_runs_dir({**on_space, "STUDIO_RUNS_DIR": "/elsewhere"}, storage) is None  # owner decides
    assert space_runs_dir(on_space, tmp_path / "no-storage") is None  # no persistent storage attached


def test_space_installs_the_cpu_torch_wheel_first() -> None:
    """pre-requirements.txt (read by a Space only) meets requirements.txt's torch pin with the CPU build."""
    pre = (ROOT / "pre-requirements.txt").read_text(encoding="utf-8").splitlines()
    lines = [line.strip() for line in pre if line.split("#", 1)[0].strip()]
    assert lines == ["--extra-index-url https://download.pytorch.org/whl/cpu", "torch==2.13.0+cpu"]
    pinned = [r for r in (ROOT / "requirements.txt").read_text().splitlines() if r.startswith("torch")]
    assert pinned == ["torch==2.13.0"]  # 2.13.0+cpu satisfies it, so the Space keeps the CPU build
    assert "download.pytorch.org" not in (ROOT / "requirements.txt").read_text()
    front = (ROOT / "README.md").read_text(encoding="utf-8").split("---")[1]
    assert 'python_version: "3.11"' in front and "suggested_hardware: cpu-basic" in front


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["ae-train", "--help"], "usage: ae-train "),
        (["ae-studio", "--help"], "usage: ae-studio "),
        (["-m", "trainers", "--help"], "usage: python -m trainers "),
        (["app.py", "--help"], "usage: python app.py "),
    ],
)
def test_help_names_the_command_as_it_was_typed(tmp_path, argv, usage) -> None:
    """`ae-train --help` said `python -m trainers` and `ae-studio --help` `python app.py`. The console
    scripts are written here as pip writes them (a script that imports the entry point)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    for script, target in SCRIPTS.items():
        module, func = target.split(":")
        (tmp_path / script).write_text(f"import sys\nfrom {module} import {func}\nsys.exit({func}())\n")
    if argv[0] == "app.py":
        shutil.copy(ROOT / "app.py", tmp_path / "app.py")
    proc = subprocess.run(
        [sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(usage), proc.stdout[:200]


def test_the_package_description_installs_from_the_declared_source() -> None:
    source = _pyproject()["project"]["urls"]["Source"]
    text = (ROOT / _pyproject()["project"]["readme"]).read_text(encoding="utf-8")
    assert not text.startswith("---") and f'pip install "git+{source}"' in text

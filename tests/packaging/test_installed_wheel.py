"""The package as users get it: a wheel installed into a fresh venv, run from an empty folder.

Nothing here may lean on the checkout: the dbt project, the profile and the scoring Python
model must come out of the installed wheel, and every artifact must land beside the warehouse.
The fresh venv takes its third-party dependencies from this interpreter's site-packages
(a path line in a .pth file) so the test runs offline in seconds; lookalike itself is the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, text=True, capture_output=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOKALIKE_", "DBT_")) and k != "PYTHONPATH"}
    # Build from a copy: setuptools writes build/ and *.egg-info into the source folder.
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "demo",
                                                               "__pycache__", ".pytest_cache", "*.duckdb*", ".dbt"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), str(source)],
        cwd=root, env=env)
    wheel = next((root / "dist").glob("lookalike-*.whl"))
    # No pip inside the venv (ensurepip costs seconds): this interpreter's pip installs into it (`--python`).
    run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], cwd=root, env=env)
    venv_python = root / "venv" / "bin" / "python"
    site_packages = Path(run([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             cwd=root, env=env).strip())
    (site_packages / "_lookalike_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(venv_python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        cwd=root, env=env)
    return root / "venv", env


def test_wheel_ships_the_dbt_project_and_a_light_import(installed):
    venv, env = installed
    empty = venv.parent / "probe"
    empty.mkdir()
    out = run([str(venv / "bin" / "python"), "-c",
               "import sys, lookalike_cli, lookalike_cli.cli.main as m; from lookalike_cli.settings import BUNDLED_DBT_PROJECT_DIR as d;"
               "print(lookalike_cli.__file__); print(d); print((d / 'dbt_project.yml').is_file(), (d / 'profiles.yml').is_file(),"
               " (d / 'python_models' / 'customer_embeddings.py').is_file());"
               "print(sorted(x for x in ('torch', 'faiss', 'onnxruntime', 'duckdb', 'lightgbm') if x in sys.modules))"],
              cwd=empty, env=env).splitlines()
    assert out[0].startswith(str(venv)), f"lookalike_cli imported from {out[0]}, not the installed wheel"
    assert out[1].startswith(str(venv))
    assert out[2] == "True True True"
    assert out[3] == "[]", f"importing the CLI loaded {out[3]}"


def test_whole_job_from_an_empty_folder(installed):
    venv, env = installed
    work = venv.parent / "work"
    work.mkdir()
    lookalike = str(venv / "bin" / "lookalike")
    run([lookalike, "generate-data", "--customers", "1500", "--days", "200"], cwd=work, env=env)
    fresh = run([lookalike, "dbt", "build"], cwd=work, env=env)  # plain dbt build, no model yet: green
    assert "customer_embeddings skipped" in fresh and "lookalike train" in fresh
    # `lookalike build` finds the same bundled project (one model: the full build just ran above).
    run([lookalike, "build", "--select", "customer_features"], cwd=work, env=env)
    run([lookalike, "train", "--epochs", "1", "--hidden", "32", "--dim", "16"], cwd=work, env=env)
    run([lookalike, "score"], cwd=work, env=env)
    run([lookalike, "build-index"], cwd=work, env=env)
    run([lookalike, "expand", "--name", "vip", "--size", "5%",
         "--seed-sql", "select customer_id from customer_features order by total_spend desc limit 60"], cwd=work, env=env)
    shown = run([lookalike, "audiences", "show", "vip"], cwd=work, env=env)
    assert "audience vip v1" in shown or "name: vip" in shown
    assert {p.name for p in work.iterdir()} >= {"lookalike.duckdb", "lookalike_serving.duckdb", "lookalike_models", "lookalike_indexes"}
    assert list((work / "lookalike_models").glob("*.onnx"))
    # With a model, plain `dbt build` scores too (the scoring model alone: the rest was built above).
    rebuilt = run([lookalike, "dbt", "build", "--select", "customer_embeddings"], cwd=work, env=env)
    assert "customer_embeddings skipped" not in rebuilt and "OK created python table model main.customer_embeddings" in rebuilt, rebuilt

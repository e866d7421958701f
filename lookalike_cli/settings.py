"""Where things live: the warehouse file, the serving file, the dbt project, model and index artifacts.

Every path can be set by a CLI option, an environment variable or an argument of
`Settings.resolve`. Defaults hang off the warehouse file, so two warehouses never share
artifacts: `shop.duckdb` has `shop_serving.duckdb`, `shop_models/` and `shop_indexes/` beside it.
The dbt project (models, macros, seeds, the scoring Python model and the profile) ships inside
the package; `lookalike init DIR` copies it out for users who want to edit it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lookalike_cli.errors import ParameterError

BUNDLED_DBT_PROJECT_DIR = Path(__file__).resolve().parent / "warehouse" / "dbt_project"

DEFAULT_DB = "lookalike.duckdb"


def serving_path_for(db_path: Path) -> Path:
    """The serving file BI tools read sits beside the warehouse file: x.duckdb -> x_serving.duckdb."""
    return db_path.with_name(f"{db_path.stem}_serving{db_path.suffix or '.duckdb'}")


def beside(db_path: Path, suffix: str) -> Path:
    """A folder that belongs to one warehouse file: x.duckdb -> x_<suffix>/ in the same folder."""
    return db_path.with_name(f"{db_path.stem}_{suffix}")


def dbt_project_at(path: str | os.PathLike) -> Path:
    """A dbt project folder given by the user; one line saying what to run when it is not one."""
    folder = Path(path).expanduser().resolve()
    if not (folder / "dbt_project.yml").is_file():
        raise ParameterError(
            f"No dbt project at {folder} (it has no dbt_project.yml). Create one with "
            f"`lookalike init {path}`, or unset LOOKALIKE_PROJECT_DIR / drop {{project_dir}} to use the bundled project.",
            "project_dir",
        )
    return folder


def writable_folder(path: Path, what: str) -> Path:
    """Create `path` if needed and check this process can write there; one line saying what to do if not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-check-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        param = "onnx_dir" if what == "models" else "index_dir"
        raise ParameterError(
            f"Cannot write {what} to {path} ({exc.strerror or exc}). Choose a writable folder "
            f"({{{param}}}, env LOOKALIKE_{param.removesuffix('_dir').upper()}_DIR).", param
        ) from exc
    return path


@dataclass(frozen=True)
class Settings:
    db_path: Path
    serving_db_path: Path
    onnx_dir: Path
    index_dir: Path
    # Local Spark metastore + tables (the profile's `spark` target, `--engine spark`).
    spark_dir: Path | None = None
    dbt_project_dir: Path = BUNDLED_DBT_PROJECT_DIR

    @classmethod
    def resolve(
        cls,
        db: str | os.PathLike | None = None,
        serving_db: str | os.PathLike | None = None,
        onnx_dir: str | os.PathLike | None = None,
        index_dir: str | os.PathLike | None = None,
        spark_dir: str | os.PathLike | None = None,
        project_dir: str | os.PathLike | None = None,
    ) -> "Settings":
        db_path = Path(db or os.environ.get("LOOKALIKE_DB") or DEFAULT_DB).expanduser().resolve()
        serving = serving_db or os.environ.get("LOOKALIKE_SERVING_DB")
        serving_path = Path(serving).resolve() if serving else serving_path_for(db_path)
        onnx = Path(onnx_dir or os.environ.get("LOOKALIKE_ONNX_DIR") or beside(db_path, "models")).resolve()
        index = Path(index_dir or os.environ.get("LOOKALIKE_INDEX_DIR") or beside(db_path, "indexes")).resolve()
        spark = Path(spark_dir or os.environ.get("LOOKALIKE_SPARK_DIR") or beside(db_path, "spark")).resolve()
        project = project_dir or os.environ.get("LOOKALIKE_PROJECT_DIR")
        project_path = dbt_project_at(project) if project else BUNDLED_DBT_PROJECT_DIR
        return cls(db_path=db_path, serving_db_path=serving_path, onnx_dir=onnx, index_dir=index,
                   spark_dir=spark, dbt_project_dir=project_path)

    @property
    def profiles_dir(self) -> Path:
        """The project's own profiles.yml when it has one (as `lookalike init` writes), else the bundled one."""
        if (self.dbt_project_dir / "profiles.yml").is_file():
            return self.dbt_project_dir
        return BUNDLED_DBT_PROJECT_DIR

    def env(self) -> dict[str, str]:
        """Environment for child processes (dbt) so they agree with this process on every path."""
        env = dict(os.environ)
        env.update(
            LOOKALIKE_DB=str(self.db_path),
            LOOKALIKE_SERVING_DB=str(self.serving_db_path),
            LOOKALIKE_ONNX_DIR=str(self.onnx_dir),
            LOOKALIKE_INDEX_DIR=str(self.index_dir),
        )
        if self.spark_dir is not None:
            env["LOOKALIKE_SPARK_DIR"] = str(self.spark_dir)
        # Each warehouse gets its own dbt target/log folders, so runs on two databases
        # (tests, benchmarks) never share compiled state, and a read-only install stays untouched.
        dbt_state = self.db_path.parent / ".dbt" / self.db_path.stem
        env.setdefault("DBT_TARGET_PATH", str(dbt_state / "target"))
        env.setdefault("DBT_LOG_PATH", str(dbt_state / "logs"))
        env.setdefault("DBT_PACKAGES_INSTALL_PATH", str(dbt_state / "dbt_packages"))
        # No network beyond package registries: never try to send usage statistics.
        env.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        return env

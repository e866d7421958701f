"""Where things live: the warehouse file, the serving file, model and index artifacts.

Every path can be set by a CLI option or an environment variable; defaults are relative
to the working directory (the database, like dbt's profile) or to the project checkout
(dbt project, ONNX artifacts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
PROFILES_DIR = PROJECT_ROOT

DEFAULT_DB = "lookalike.duckdb"


def serving_path_for(db_path: Path) -> Path:
    """The serving file BI tools read sits beside the warehouse file: x.duckdb -> x_serving.duckdb."""
    return db_path.with_name(f"{db_path.stem}_serving{db_path.suffix or '.duckdb'}")


@dataclass(frozen=True)
class Settings:
    db_path: Path
    serving_db_path: Path
    onnx_dir: Path
    index_dir: Path
    # Local Spark metastore + tables (the profile's `spark` target, `--engine spark`).
    spark_dir: Path | None = None

    @classmethod
    def resolve(
        cls,
        db: str | os.PathLike | None = None,
        serving_db: str | os.PathLike | None = None,
        onnx_dir: str | os.PathLike | None = None,
        index_dir: str | os.PathLike | None = None,
        spark_dir: str | os.PathLike | None = None,
    ) -> "Settings":
        db_path = Path(db or os.environ.get("LOOKALIKE_DB") or DEFAULT_DB).resolve()
        serving = serving_db or os.environ.get("LOOKALIKE_SERVING_DB")
        serving_path = Path(serving).resolve() if serving else serving_path_for(db_path)
        onnx = Path(onnx_dir or os.environ.get("LOOKALIKE_ONNX_DIR") or PROJECT_ROOT / "onnx").resolve()
        index = Path(index_dir or os.environ.get("LOOKALIKE_INDEX_DIR") or db_path.parent / "indexes").resolve()
        spark = Path(spark_dir or os.environ.get("LOOKALIKE_SPARK_DIR") or db_path.with_name(f"{db_path.stem}_spark")).resolve()
        return cls(db_path=db_path, serving_db_path=serving_path, onnx_dir=onnx, index_dir=index, spark_dir=spark)

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
        # (tests, benchmarks) never share compiled state.
        dbt_state = self.db_path.parent / ".dbt" / self.db_path.stem
        env.setdefault("DBT_TARGET_PATH", str(dbt_state / "target"))
        env.setdefault("DBT_LOG_PATH", str(dbt_state / "logs"))
        # No network beyond package registries: never try to send usage statistics.
        env.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        return env

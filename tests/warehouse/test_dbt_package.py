"""The dbt project as a dbt package inside a user's own dbt project: examples/dbt_package, built for real.

A copy of the example points its packages.yml at this package's dbt project, the shop's raw
tables are generated and moved to the schema `shop` under other names (no `raw` schema is left,
so only the vars can lead lookalike to them), then `dbt deps` and `dbt build` run as a user
would run them. Self-contained: no conftest helpers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest

from lookalike_cli.settings import BUNDLED_DBT_PROJECT_DIR
from lookalike_cli.warehouse.dbt_runner import dbt_executable
from lookalike_cli.warehouse.generate import generate_data

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dbt_package"
CUSTOMERS = 1000
SHOP_TABLES = {"crm_customers", "sales_order_lines", "web_visits", "email_engagements", "marketing_opt_outs"}


def dbt(project: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [*dbt_executable(), *args, "--profiles-dir", str(project)],
        cwd=project, env=env, text=True, capture_output=True, timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"dbt {' '.join(args)} failed (exit {result.returncode}):\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def built_example(tmp_path_factory):
    """The example copied out, its package path set to this package's dbt project, built once."""
    root = tmp_path_factory.mktemp("dbt_package")
    project = root / "my_shop"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(
        "target", "dbt_packages", "logs", "package-lock.yml", "*.duckdb", "*.duckdb.wal"))
    packages = project / "packages.yml"
    text = packages.read_text()
    assert "local: ../../lookalike_cli/warehouse/dbt_project" in text  # what the checkout ships
    packages.write_text(text.replace("../../lookalike_cli/warehouse/dbt_project", str(BUNDLED_DBT_PROJECT_DIR)))
    # A model of the user's named like one of lookalike's (its own alias, so the tables differ):
    # lookalike's ref('categories') must still mean lookalike's (the example's flag
    # require_ref_searches_node_package_before_root).
    (project / "models" / "categories.sql").write_text(
        "{{ config(alias='shop_categories') }}\nselect 'toys' as shop_category\n")

    db = root / "warehouse.duckdb"
    generate_data(db, customers=CUSTOMERS, days=180, seed=11, progress=None)
    # A user's shell: none of the lookalike CLI's variables (serving file, model ready) nor dbt's.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOKALIKE_", "DBT_"))}
    env["SHOP_DB"] = str(db)

    outputs = {
        "deps": dbt(project, env, "deps"),
        "load": dbt(project, env, "run-operation", "load_sample_shop"),
        "build": dbt(project, env, "build"),
    }
    return project, db, outputs


def tables(db: Path) -> dict[tuple[str, str], str]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("select table_schema, table_name, table_type from information_schema.tables").fetchall()
    return {(schema, name): kind for schema, name, kind in rows}


def scalar(db: Path, sql: str):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchone()[0]


@pytest.mark.slow
def test_package_is_installed_from_the_local_path(built_example):
    project, _, _ = built_example
    link = project / "dbt_packages" / "lookalike"
    assert link.exists() and link.resolve() == BUNDLED_DBT_PROJECT_DIR.resolve()


@pytest.mark.slow
def test_raw_tables_are_read_under_the_shops_own_names(built_example):
    _, db, outputs = built_example
    present = tables(db)
    assert not any(schema == "raw" for schema, _ in present), "load_sample_shop drops raw: only the vars can find the data"
    assert {name for schema, name in present if schema == "shop"} == SHOP_TABLES
    # lookalike's staging views read shop.* through the vars.
    assert scalar(db, "select count(*) from main.stg_customers") == scalar(db, "select count(*) from shop.crm_customers") == CUSTOMERS
    assert scalar(db, "select count(*) from main.stg_order_lines") > 10 * CUSTOMERS
    assert scalar(db, "select count(*) from main.stg_visits") > 0  # optional tables found too (use_visits: auto)
    assert "PASS" in outputs["build"] and "ERROR=0" in outputs["build"]


@pytest.mark.slow
def test_lookalike_marts_are_built_with_sensible_rows(built_example):
    _, db, _ = built_example
    assert scalar(db, "select count(*) from main.customer_features") == CUSTOMERS
    assert scalar(db, "select count(*) from main.training_features") == CUSTOMERS
    assert scalar(db, "select count(*) from main.categories") > 5
    assert scalar(db, "select count(distinct split) from main.similarity_pairs") == 3
    assert scalar(db, "select count(*) from main.similarity_pairs") > CUSTOMERS
    assert scalar(db, "select count(*) from main.persona_definitions") > 0  # the package's seed
    assert scalar(db, "select count(*) from main.customer_features where order_count > 0") > CUSTOMERS // 2


@pytest.mark.slow
def test_users_model_refs_a_lookalike_mart(built_example):
    _, db, _ = built_example
    buyers = scalar(db, "select count(*) from main.customer_features where order_count > 0")
    high_value = scalar(db, "select count(*) from main.high_value_customers")
    assert high_value == -(-buyers // 10)  # ntile(10): the first decile holds ceil(n / 10)
    # They are the top spenders.
    assert scalar(db, """
        select min(h.total_spend) >= max(f.total_spend)
        from main.high_value_customers h,
             (select total_spend from main.customer_features
              where order_count > 0 and customer_id not in (select customer_id from main.high_value_customers)) f
    """)


@pytest.mark.slow
def test_a_users_model_with_a_lookalike_name_does_not_capture_its_refs(built_example):
    project, db, _ = built_example
    manifest = json.loads((project / "target" / "manifest.json").read_text())
    depends = manifest["nodes"]["model.lookalike.customer_features"]["depends_on"]["nodes"]
    assert "model.lookalike.categories" in depends and "model.my_shop.categories" not in depends
    assert scalar(db, "select count(*) from main.shop_categories") == 1
    assert scalar(db, "select count(*) from main.categories") > 5


@pytest.mark.slow
def test_package_scoped_vars_reach_lookalike_models(built_example):
    project, _, _ = built_example
    # recent_days: 60 under `vars: {lookalike: ...}` in the example (the package's default is 90).
    compiled = (project / "target" / "compiled" / "lookalike" / "models" / "intermediate"
                / "int_customer_orders_aggregated.sql").read_text()
    assert "-60" in compiled and "-90" not in compiled


@pytest.mark.slow
def test_what_cannot_run_as_a_package_is_off_by_default(built_example):
    project, db, outputs = built_example
    run = json.loads((project / "target" / "run_results.json").read_text())
    statuses = {result["unique_id"]: result["status"] for result in run["results"]}
    assert statuses["model.lookalike.customer_features"] == "success"
    assert statuses["model.my_shop.high_value_customers"] == "success"
    assert all(status in ("success", "pass") for status in statuses.values()), statuses
    # The ONNX scoring model waits for score_customers; the serving model for LOOKALIKE_SERVING_DB or use_serving.
    assert "model.lookalike.customer_embeddings" not in statuses
    assert "model.lookalike.audience_member_profiles" not in statuses
    present = {name for _, name in tables(db)}
    assert "customer_embeddings" not in present and "audience_member_profiles" not in present
    # The package's on-run-end hook stays quiet in someone else's project.
    assert "customer_embeddings skipped" not in outputs["build"]

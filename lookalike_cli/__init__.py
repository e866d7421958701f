"""lookalike: warehouse-native lookalike audiences.

The layers, from the data up: warehouse (DuckDB, the bundled dbt project) -> model (two-tower
encoder, ONNX) -> index (FAISS) -> audiences (seeds, strategies, expand, publish) -> trust,
personas, ads, spark -> cli. The public API, for notebooks and schedulers:

    from lookalike_cli import Settings, build, train, score, build_index, expand, publish
    s = Settings.resolve(db="shop.duckdb")
    build(s); train(s); score(s); build_index(s)
    publish(s, "vip", expand(s, seed_sql="select customer_id from vip_customers", size="5%"))

Importing the package loads none of torch, click, FAISS or ONNX Runtime.
"""

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.settings import Settings
from lookalike_cli.version import __version__

API = ("generate_data", "build", "train", "score", "build_index", "expand", "publish", "show", "recommend")
__all__ = ["Settings", "LookalikeError", "ParameterError", *API, "__version__"]


def __getattr__(name: str):
    # The API functions live in lookalike_cli.api; importing it lazily keeps `import lookalike_cli` light.
    if name in API:
        from lookalike_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'lookalike_cli' has no attribute {name!r}")

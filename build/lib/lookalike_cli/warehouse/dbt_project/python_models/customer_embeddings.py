"""customer_embeddings: every customer of customer_features scored by the exported encoder.

Thin on purpose: the work is lookalike_cli.model.scoring (ONNX Runtime over Arrow batches).
Model choice comes from vars (see schema.yml); the ONNX folder from LOOKALIKE_ONNX_DIR,
which `lookalike score` / `lookalike dbt` pass down. If scoring raises, dbt keeps the
previous customer_embeddings table.
"""

import os


def model(dbt, session):
    dbt.config(materialized="table")
    from lookalike_cli.model.scoring import score_relation

    model_name = dbt.config.get("lookalike_model")
    quantize = dbt.config.get("lookalike_quantize")
    model_version = dbt.config.get("lookalike_model_version")
    return score_relation(
        dbt.ref("customer_features"),
        session,
        onnx_dir=os.environ.get("LOOKALIKE_ONNX_DIR"),
        model=model_name or None,
        quantize=quantize or "none",
        expected_version=model_version or None,
        progress=lambda line: print(line, flush=True),  # into dbt's log
    )

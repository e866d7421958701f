"""Export a trained tower to ONNX plus a JSON manifest that makes scoring self-contained.

<name>.onnx   inputs named in the manifest, output `embedding` (L2-normalised)
<name>.json   config, feature spec (order, vocabularies, normalisation, hashing),
                   label, metrics, training data fingerprint, model version id
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from lookalike_cli.version import __version__
from lookalike_cli.model.features import HASH_FUNCTION, LOCATION_COLUMN, SHARE_COLUMNS, TOKEN_PATTERN, FeatureSpec
from lookalike_cli.model.locations import LOCATION_TABLE, SENTENCE_MODEL
from lookalike_cli.files import remove_stale_temp_files, replaced, temp_path, write_text_atomically
from lookalike_cli.model.manifest import MANIFEST_FORMAT, OUTPUT_NAME, verified_model_file
from lookalike_cli.model.tower import CustomerTower, ServingTower, TowerConfig



def example_inputs(spec: FeatureSpec, n: int = 4) -> dict[str, torch.Tensor]:
    inputs = {
        "dense": torch.zeros(n, len(spec.dense_columns)),
        "categorical": torch.zeros(n, len(spec.categorical_columns), dtype=torch.int64),
        "shares": torch.zeros(n, spec.n_categories),
    }
    if spec.location == "word":
        inputs["location"] = torch.zeros(n, spec.n_tokens, dtype=torch.int64)
    elif spec.location == "sentence":
        inputs["location"] = torch.zeros(n, spec.sentence_dim)
    return inputs


def export_graph(module: torch.nn.Module, inputs: dict[str, torch.Tensor], dynamic_axes: dict[str, dict[int, str]],
                 path: Path) -> None:
    """`module` (in eval mode) as one ONNX file at `path`: inputs named as in `inputs`, output OUTPUT_NAME, the
    axes in `dynamic_axes` left free (the batch, a token count).

    The TorchScript exporter (`dynamo=False`): on these small graphs it takes ~0.5 s where the dynamo exporter
    took 7-10 s (torch 2.13, measured on this machine), which was most of `lookalike train` at test and demo
    scale; its graphs give the same outputs (ONNX Runtime vs torch within 1e-6, checked at every export by the
    callers' parity checks). Both the customer tower and the ads encoder export through here.
    """
    # The exporter warns about its own deprecation and about trace-time constants these graphs do not have.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(inputs.values()), str(path), dynamo=False, input_names=list(inputs),
                          output_names=[OUTPUT_NAME], dynamic_axes={**dynamic_axes, OUTPUT_NAME: {0: "batch"}},
                          verbose=False)


def export_onnx(tower: CustomerTower, spec: FeatureSpec, path: Path, serving_form: bool = True) -> None:
    """The tower as an ONNX graph: by default in its inference arrangement (tower.ServingTower), the same
    function; serving_form=False exports the training form as it is (benchmarks/bench_serving_graph.py)."""
    inputs = example_inputs(spec)
    tower.eval()
    serving = ServingTower(tower).eval() if serving_form else tower
    export_graph(serving, inputs, {name: {0: "batch"} for name in inputs}, path)


def input_description(spec: FeatureSpec) -> list[dict]:
    described = [
        {"name": "dense", "dtype": "float32", "shape": ["batch", len(spec.dense_columns)], "columns": spec.dense_columns,
         "encoding": "raw values, null -> 0; the graph applies log1p(max(x, 0)) and (x - dense_mean) / dense_std"},
        {"name": "categorical", "dtype": "int64", "shape": ["batch", len(spec.categorical_columns)], "columns": spec.categorical_columns,
         "encoding": "1 + index of the value in vocabularies[column], 0 when unseen; the graph one-hot encodes"},
        {"name": "shares", "dtype": "float32", "shape": ["batch", spec.n_categories], "columns": list(SHARE_COLUMNS),
         "encoding": "dense[row, category_ids[j]] = category_shares[j], 0 elsewhere"},
    ]
    if spec.location == "word":
        described.append({"name": "location", "dtype": "int64", "shape": ["batch", spec.n_tokens], "columns": [LOCATION_COLUMN],
                          "encoding": HASH_FUNCTION, "token_pattern": TOKEN_PATTERN, "n_buckets": spec.n_buckets})
    elif spec.location == "sentence":
        described.append({"name": "location", "dtype": "float32", "shape": ["batch", spec.sentence_dim], "columns": [LOCATION_COLUMN],
                          "encoding": f"{LOCATION_TABLE}.embedding of the row's location_area ({SENTENCE_MODEL}); zeros when ''",
                          "table": LOCATION_TABLE, "sentence_model": SENTENCE_MODEL})
    return described


def artifact_identity(name: str, onnx_path: Path) -> dict:
    """The manifest fields naming an exported model: the version is the name plus the graph's hash, so scoring can
    refuse embeddings of another export; the torch weights are saved as <name>.pt beside the graph."""
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    return {
        "name": name,
        "model_version": f"{name}-{digest[:12]}",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "created_by": f"lookalike {__version__}, torch {torch.__version__}",
        "onnx_file": onnx_path.name,
        "onnx_sha256": digest,
        "weights_file": f"{name}.pt",
    }


def export_model(result, onnx_dir: Path, name: str, warehouse: Path | None = None, warehouse_id: str | None = None) -> Path:
    """Write <name>.onnx and <name>.json for a train.TrainResult; returns the manifest path."""
    onnx_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(onnx_dir)  # of an export killed before its swap
    onnx_path = onnx_dir / f"{name}.onnx"
    # Each file is written beside its target and moved in when whole, the manifest last: a kill leaves the
    # previous export, or at worst a new graph under the old manifest, which its onnx_sha256 refuses.
    with replaced(onnx_path, ".onnx") as onnx_tmp, replaced(onnx_dir / f"{name}.pt") as weights_tmp:
        export_onnx(result.tower, result.spec, onnx_tmp)
        # The torch weights stay beside the graph: the parity test and the torch-vs-ORT benchmark load them.
        torch.save(result.tower.state_dict(), weights_tmp)
        identity = {**artifact_identity(name, onnx_tmp), "onnx_file": onnx_path.name}
    manifest = {
        "format_version": MANIFEST_FORMAT,
        **identity,
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", result.tower.config.dim], "l2_normalised": True},
        "inputs": input_description(result.spec),
        "config": result.tower.config.to_dict(),
        "features": result.spec.to_dict(),
        "label": result.options.label,
        "training": {"options": dataclasses.asdict(result.options), "data_fingerprint": result.fingerprint,
                     # The warehouse file it was trained on: scoring another warehouse with it is refused.
                     "warehouse": str(Path(warehouse).resolve()) if warehouse else None, "warehouse_id": warehouse_id},
        "metrics": {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in result.metrics.items()},
        "quantized": {},
    }
    path = onnx_dir / f"{name}.json"
    write_text_atomically(path, json.dumps(manifest, indent=2) + "\n")
    return path


def gemm_to_matmul(model):
    """Rewrite Gemm(transB=1) as MatMul + Add: ORT's dynamic quantiser only handles MatMul."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        simple = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not simple or node.input[1] not in weights:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        weights[node.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(weight), node.input[1]))
        if len(node.input) < 3 or not node.input[2]:  # no bias (ServingTower's share and location layers)
            nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]], list(node.output), name=node.name + "_matmul"))
            continue
        product = node.output[0] + "_matmul"
        nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]], [product], name=node.name + "_matmul"))
        nodes.append(helper.make_node("Add", [product, node.input[2]], list(node.output), name=node.name + "_bias"))
    del graph.node[:]
    graph.node.extend(nodes)
    # Stale shapes of the transposed weights would contradict shape inference; let it redo them.
    del graph.value_info[:]
    return model


def quantize_int8(manifest_path: Path) -> Path:
    """Dynamic int8 quantisation of the dense layers (weights int8, activations quantised on the fly).

    The first layer stays fp32: its input mixes z-scores, one-hots and small category shares,
    and one per-tensor uint8 scale for all of them rounds the shares away (min cosine to fp32
    fell to 0.996; 0.9997 without it). In the exported ServingTower that layer is three MatMuls
    (dense, shares, location), so every MatMul not fed by a ReLU stays fp32; quantising the
    shares one alone cost min cosine 0.97 (raw shares in [0, 1] on one uint8 scale). Per-channel
    weights and static (calibrated) activations were no better (0.97-0.99, benchmarks/RESULTS.md).
    The location embedding table (a Gather) stays fp32 too.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    manifest = json.loads(manifest_path.read_text())
    source = manifest_path.parent / manifest["onnx_file"]
    target = source.with_name(f"{manifest['name']}.int8.onnx")
    staged = temp_path(source.with_name(f"{manifest['name']}.matmul"), ".onnx")
    verified_model_file(manifest_path, manifest)
    graph = gemm_to_matmul(onnx.load(str(source)))
    relu_outputs = {output for node in graph.graph.node if node.op_type == "Relu" for output in node.output}
    first_layer = [node.name for node in graph.graph.node if node.op_type == "MatMul" and node.input[0] not in relu_outputs]
    remove_stale_temp_files(source.parent)
    try:
        onnx.save(graph, str(staged))
        with replaced(target, ".onnx") as target_tmp:
            quantize_dynamic(str(staged), str(target_tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                             nodes_to_exclude=first_layer)
    finally:
        staged.unlink(missing_ok=True)
    manifest["quantized"]["int8"] = target.name
    # Checked before the int8 graph is loaded, as onnx_sha256 is for the fp32 one.
    manifest.setdefault("quantized_sha256", {})["int8"] = hashlib.sha256(target.read_bytes()).hexdigest()
    write_text_atomically(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return target


def load_tower(manifest_path: Path) -> CustomerTower:
    """The torch module of an export, rebuilt from the manifest's config and the saved weights."""
    manifest = json.loads(Path(manifest_path).read_text())
    tower = CustomerTower(TowerConfig(**manifest["config"]))
    tower.load_state_dict(torch.load(Path(manifest_path).parent / manifest["weights_file"], weights_only=True))
    return tower.eval()

"""Evaluation assets: unsupervised change detection, MATTER next to its untrained twin and CVA."""

import json
from collections.abc import Iterable
from pathlib import Path

import dagster as dg

from assets.logs import forward_project_logs
from assets.partitions import CONFIG
from assets.previews import markdown_table, png_metadata
from assets.resources import DataStore
from matter_model.atomic_io import atomic_write_text
from matter_model.change_detection import ChangePair
from matter_model.change_evaluation import compare_with_baselines
from matter_model.checkpoint import load_model
from matter_model.datasets.oscd import OSCD
from matter_model.downstream.oscd import unsupervised as oscd_unsupervised
from pipelines.demo_world.truth import demo_change_pairs

GROUP = "evaluation"


@dg.asset(group_name=GROUP, deps=["matter_pretrained"], kinds={"pytorch"})
def change_detection_eval(
    context: dg.AssetExecutionContext, store: DataStore
) -> dg.MaterializeResult:
    """Precision / recall / F1 of the change class: MATTER, MATTER untrained, and CVA.

    On the demo world's planted changes (every materialised stack, first vs last date) and on
    the labelled OSCD cities when ``evaluation.oscd_root`` exists.
    """
    settings = CONFIG.evaluation
    checkpoint = store.model_dir / "checkpoint.pt"
    model, model_config = load_model(checkpoint)
    bands = list(model_config["bands"])  # the pairs are read with the bands the model expects
    datasets: dict[str, Iterable[ChangePair]] = {}
    stacks = sorted(store.path("stacks").glob("*/*.zarr"))
    if CONFIG.stac.endpoint == "demo" and stacks:
        datasets["demo_world"] = demo_change_pairs(store.demo_world, stacks, bands)
    oscd_root = settings.oscd_root
    oscd = OSCD(Path(oscd_root)) if oscd_root and Path(oscd_root).exists() else None
    if oscd is None:
        context.log.info(f"OSCD not evaluated: evaluation.oscd_root {oscd_root!r} does not exist")
    if not datasets and oscd is None:
        raise RuntimeError("nothing to evaluate on: no demo-world stacks and no OSCD root")
    previews = store.reports / "change_maps"
    window, sigma, output = settings.window, settings.sigma, settings.features
    with forward_project_logs(context):
        results = compare_with_baselines(
            model, model_config, datasets, window, sigma, previews, output
        )
        if oscd is not None:  # the same code as `python -m matter_model.evaluate oscd`
            results["oscd"] = oscd_unsupervised(
                model, model_config, oscd, oscd.labelled_cities(), window, sigma, previews, output
            )
    report = {
        "checkpoint": str(checkpoint),
        "window": window,
        "sigma": sigma,
        "features": output,
        "bands": bands,
        "results": results,
    }
    path = store.reports / "matter_report.json"
    atomic_write_text(path, json.dumps(report, indent=2))
    rows = [
        {
            "dataset": dataset,
            "method": method,
            "precision": r["micro"]["precision"],
            "recall": r["micro"]["recall"],
            "f1": r["micro"]["f1"],
            "auc": r["macro"]["auc"],
            "average_precision": r["macro"]["average_precision"],
        }
        for dataset, by_method in results.items()
        for method, r in by_method.items()
    ]
    metadata: dict = {
        "change_detection_micro": markdown_table(rows),
        "report": dg.MetadataValue.path(str(path)),
        **{f"{row['dataset']}_{row['method']}_f1": row["f1"] for row in rows},
    }
    for change_map in sorted(previews.glob("*.png")):  # dates, truth, MATTER's prediction
        metadata.update(
            png_metadata(change_map.read_bytes(), change_map, f"change_map_{change_map.stem}")
        )
    return dg.MaterializeResult(metadata=metadata)

"""Export a training checkpoint as weights that declare their inputs.

``python -m matter_model.export --checkpoint PATH --out DIR [--product-level L1C|L2A]
[--gsd-m 10] [--reflectance-offset X] [--metrics metrics.json] [--patch-store DIR]`` writes
``DIR/model.safetensors`` (the weights alone), ``DIR/model_card.json`` (bands in order, product
level, reflectance scale and offset, normalisation, GSD, crop / sub-patch / window sizes,
architecture and parameter count, training steps and loss, what the patch store records of its
data, and the evaluation figures with their protocol when ``--metrics`` is given) and a short
``DIR/README.md`` rendered from the card. ``matter_model.load(DIR)`` reads them back.

The folder is written under a temporary name and renamed into place, so a reader sees the old
export or the new one whole, and a rerun replaces it cleanly. A fact neither the checkpoint, the
patch store nor a flag provides is written as null with a ``<key>_reason`` beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from matter_model.atomic_io import atomic_directory
from matter_model.checkpoint import CheckpointError, load_checkpoint, model_config, model_from_state
from matter_model.inputs import SCENE_STANDARDISED
from matter_model.logs import configure_cli_logging
from matter_model.patch_store import PROVENANCE, normalisation_of, read_provenance
from matter_model.pretrained import (
    CARD,
    CARD_FORMAT,
    CARD_VERSION,
    WEIGHTS,
    file_sha256,
    parse_product_level,
)

# Named, not __name__: under `python -m matter_model.export` that is "__main__".
logger = logging.getLogger("matter_model.export")

README = "README.md"
REFLECTANCE_SCALE = 1e-4  # Sentinel-2 DN to reflectance
# The offset the pipeline adds after scaling: L2A from processing baseline 04.00 on carries
# +1000 DN (pipelines.coregistration.BOA_OFFSET); the OSCD L1C release predates it.
DEFAULT_OFFSET = {"L2A": -0.1, "L1C": 0.0}
OFFSET_NOTE = {
    "L2A": "L2A of processing baseline 04.00 or later, as the pipeline harmonises it; pass "
    "offset=0.0 to prepare for a scene of an earlier baseline",
    "L1C": "L1C as the OSCD release holds it (before processing baseline 04.00); pass "
    "offset=-0.1 to prepare for a later L1C scene",
}
NORMALISATION_STATISTICS = {
    "reflectance": "none: the model reads reflectance as computed",
    SCENE_STANDARDISED: "per image and band over its finite pixels: subtract the median, divide "
    "by IQR / 1.349; no stored statistics, so the whole scene must be prepared at once",
}


class ExportInputError(ValueError):
    """What the export needs is missing or contradicts the checkpoint or the patch store."""


def _store_json(patch_store: str | Path | None) -> tuple[dict[str, Any], str | None]:
    """The patch store's store.json with what its provenance.json records laid over it
    (``matter_model.patch_store.PROVENANCE``), or {} and why it could not be read."""
    if not patch_store:
        return {}, "the checkpoint names no patch store"
    path = Path(patch_store) / "store.json"
    try:
        meta = json.loads(path.read_text())
        provenance = read_provenance(patch_store)
    except (OSError, json.JSONDecodeError) as exc:
        return {}, f"the patch store's store.json or {PROVENANCE} could not be read ({exc})"
    provenance.pop("shards", None)  # per shard: the manifests' own record
    return {**meta, **provenance}, None


def _known(key: str, value: Any, reason: str) -> dict[str, Any]:
    """``{key: value}``, or ``{key: None, key_reason: reason}`` when value is None."""
    return {key: value} if value is not None else {key: None, f"{key}_reason": reason}


def data_record(patch_store: str | Path | None) -> dict[str, Any]:
    """What the patch store records about the data behind the model: the digest of its triplet
    manifests and the number of STAC items behind them (``manifest_digest`` and ``stac_items`` of
    its provenance.json, or of store.json)."""
    meta, unreadable = _store_json(patch_store)
    missing = unreadable or (
        f"the patch store records no provenance ({PROVENANCE}): re-run `patch_triplets`"
    )
    return {
        "patch_store_format": meta.get("format"),
        "patch_store_version": meta.get("version"),
        "normalisation": normalisation_of(meta) if meta else None,
        **_known("manifest_digest", meta.get("manifest_digest"), missing),
        **_known("stac_items", meta.get("stac_items"), missing),
    }


def _resolve_level(given: str | None, store: dict[str, Any]) -> str:
    recorded = store.get("product_level")
    if given is None and recorded is None:
        raise ExportInputError(
            "neither --product-level nor the patch store (store.json, provenance.json) says "
            "which product level the model was trained on; pass --product-level L1C or L2A"
        )
    level = parse_product_level(given if given is not None else recorded)
    if recorded is not None and parse_product_level(recorded) != level:
        raise ExportInputError(
            f"--product-level {given} contradicts the patch store, which records {recorded}"
        )
    return level


def _inputs(
    config: dict[str, Any],
    level: str,
    gsd_m: float | None,
    offset: float | None,
) -> dict[str, Any]:
    method = config["normalisation"]
    return {
        "bands": list(config["bands"]),
        "product_level": level,
        "reflectance": {
            "scale": REFLECTANCE_SCALE,
            "offset": DEFAULT_OFFSET[level] if offset is None else float(offset),
            "formula": "reflectance = DN * scale + offset",
            "note": OFFSET_NOTE[level],
        },
        "normalisation": {
            "method": method,
            "statistics": NORMALISATION_STATISTICS.get(method, "see matter_model.inputs"),
        },
        **_known("gsd_m", gsd_m, "neither --gsd-m nor the patch store records it"),
        "layout": "(B, C, H, W) float32, bands in the order above",
        "crop_size": int(config["crop_size"]),
        "subpatch": int(config["subpatch"]),
        "window": int(config["subpatch"]),
    }


def _training(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    history = state.get("loss_history") or []
    never = "the checkpoint records no training history"
    return {
        **_known("steps", state.get("step"), never),
        "loss": {
            "name": "sub-patch InfoNCE",
            "temperature": config.get("temperature"),
            **_known("final", history[-1] if history else None, never),
        },
        "batch_size": config.get("batch_size"),
        "subpatches_per_crop": config.get("subpatches_per_crop"),
        "optimizer": config.get("optimizer", "adam"),
        "lr": config.get("lr"),
        "seed": config.get("seed"),
        "augment": config.get("augment"),
    }


def _evaluation(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    figures = {k: v for k, v in metrics.items() if k not in ("task", "protocol")}
    return {
        "task": metrics.get("task"),
        **_known("protocol", metrics.get("protocol"), "the metrics file names no protocol"),
        "figures": figures,
    }


def build_card(
    state: dict[str, Any],
    model: torch.nn.Module,
    weights_sha256: str,
    product_level: str | None = None,
    gsd_m: float | None = None,
    reflectance_offset: float | None = None,
    metrics: dict[str, Any] | None = None,
    patch_store: str | Path | None = None,
) -> dict[str, Any]:
    """The model card of a loaded checkpoint ``state`` and its ``model``."""
    config = model_config(state)
    store = patch_store if patch_store is not None else config.get("patch_store")
    meta, _ = _store_json(store)
    level = _resolve_level(product_level, meta)
    gsd = gsd_m if gsd_m is not None else meta.get("gsd_m")
    return {
        "format": CARD_FORMAT,
        "version": CARD_VERSION,
        "weights": {"file": WEIGHTS, "sha256": weights_sha256},
        "inputs": _inputs(config, level, gsd, reflectance_offset),
        "architecture": {
            "model": dict(config["model"]),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "training": _training(state, config),
        "data": data_record(store),
        "evaluation": _evaluation(metrics),
    }


def render_readme(card: dict[str, Any]) -> str:
    """A short human-readable summary of ``card``."""
    inputs, training = card["inputs"], card["training"]
    reflectance = inputs["reflectance"]
    offset = float(reflectance["offset"])
    gsd = f"{inputs['gsd_m']} m" if inputs["gsd_m"] is not None else "not recorded"
    steps = training["steps"] if training["steps"] is not None else "not recorded"
    final = training["loss"]["final"]
    lines = [
        "# MATTER weights",
        "",
        f"- Bands, in order: {', '.join(inputs['bands'])}",
        f"- Product level: Sentinel-2 {inputs['product_level']}",
        f"- Reflectance: DN * {reflectance['scale']:g} {'-' if offset < 0 else '+'} "
        f"{abs(offset):g} ({reflectance['note']})",
        f"- Normalisation: {inputs['normalisation']['method']}",
        f"- GSD: {gsd}",
        f"- Crop {inputs['crop_size']} px, sub-patch and window {inputs['window']} px",
        f"- Architecture: {card['architecture']['model'].get('name')}, "
        f"{card['architecture']['parameters']} parameters",
        f"- Training steps: {steps}; final loss: {final if final is not None else 'not recorded'}",
    ]
    if card["evaluation"] is not None:
        evaluation = card["evaluation"]
        lines.append(
            f"- Evaluation: {evaluation['task']}, protocol {evaluation['protocol']} "
            f"(figures in {CARD})"
        )
    lines += [
        "",
        "```python",
        "import matter_model",
        "",
        "model, prepare = matter_model.load(FOLDER)",
        f"x = prepare(dn, bands, {inputs['product_level']!r})  # refuses other bands or levels",
        f"embeddings = model.embed(x, window={inputs['window']})",
        "```",
        "",
        f"Every field is in {CARD}.",
        "",
    ]
    return "\n".join(lines)


def _read_metrics(path: str | Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportInputError(f"--metrics {path} is unreadable ({exc})") from exc
    if not isinstance(metrics, dict):
        raise ExportInputError(
            f"--metrics {path} is not an object as `python -m matter_model.evaluate` writes"
        )
    return metrics


def export(
    checkpoint: str | Path,
    out: str | Path,
    product_level: str | None = None,
    gsd_m: float | None = None,
    reflectance_offset: float | None = None,
    metrics: str | Path | None = None,
    patch_store: str | Path | None = None,
) -> dict[str, Any]:
    """Write the weights, card and README of ``checkpoint`` to the folder ``out``, atomically;
    return the card."""
    state = load_checkpoint(checkpoint)
    model = model_from_state(state, checkpoint)
    evaluation = _read_metrics(metrics)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(out) as tmp:
        save_file(weights, tmp / WEIGHTS, metadata={"format": "pt"})
        card = build_card(
            state,
            model,
            file_sha256(tmp / WEIGHTS),
            product_level,
            gsd_m,
            reflectance_offset,
            evaluation,
            patch_store,
        )
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
        (tmp / README).write_text(render_readme(card))
    logger.info("exported %s to %s", checkpoint, out)
    return card


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m matter_model.export", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint.pt of matter_model.train")
    parser.add_argument("--out", required=True, help="the export folder (replaced whole)")
    parser.add_argument(
        "--product-level",
        choices=("L1C", "L2A"),
        type=str.upper,
        help="the imagery's level (required unless the patch store records it)",
    )
    parser.add_argument("--gsd-m", type=float, help="ground sampling distance of the patches, m")
    parser.add_argument(
        "--reflectance-offset",
        type=float,
        help="added after DN * 1e-4 (default: -0.1 for L2A, 0.0 for L1C)",
    )
    parser.add_argument("--metrics", help="metrics JSON of python -m matter_model.evaluate")
    parser.add_argument("--patch-store", help="the patch store (default: the checkpoint's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring); errors end it with status 1."""
    args = _parse(argv)
    configure_cli_logging()  # export() logs the "exported ... to ..." line
    try:
        export(
            args.checkpoint,
            args.out,
            args.product_level,
            args.gsd_m,
            args.reflectance_offset,
            args.metrics,
            args.patch_store,
        )
    except (CheckpointError, ExportInputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()

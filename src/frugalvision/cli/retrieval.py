"""``frugalvision embed | index | search | evaluate``: the image-search commands."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Literal

import click
import numpy as np

from frugalvision.cli._app import cli, data_warnings
from frugalvision.cli._options import (
    batch_size_option,
    device_option,
    model_options,
    on_corrupt_option,
    progress_option,
    workers_option,
)
from frugalvision.errors import StoreError


def _embedder(model: str, pretrained: bool = True, weights: Path | None = None) -> Any:
    """A model bundle folder (from `frugalvision train`) or a backbone name."""
    from frugalvision.bundle import is_bundle, load
    from frugalvision.models import create_backbone

    if is_bundle(model):
        if weights is not None:
            raise click.UsageError(
                "--weights applies to backbone names, not to a model bundle (it has its weights)"
            )
        return load(model)
    if Path(model).is_dir():
        raise StoreError(
            f"--model {model} is a folder but not a model bundle (no frugalvision config.json in it)"
        )
    return create_backbone(model, pretrained=pretrained, weights=weights)


@cli.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder of the embedding store to write (created; resumed if it exists).",
)
@model_options(
    model_help="timm model name (with optional pretrained tag), an offline backbone name, or a model bundle folder from `frugalvision train`."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "folder", "manifest", "coco", "yolo"]),
    default="auto",
    show_default=True,
    help="How to read DATA: class-per-folder tree, CSV/JSONL manifest, COCO JSON, YOLO folder.",
)
@batch_size_option()
@workers_option()
@click.option(
    "--normalize/--no-normalize",
    default=True,
    show_default=True,
    help="L2-normalise the vectors (inner product = cosine similarity).",
)
@on_corrupt_option()
@device_option()
@click.option(
    "--shard-size",
    default=None,
    type=click.IntRange(min=1),
    help="Save finished embeddings every this many images, so a killed run loses at most these "
    "[default: 256].",
)
@click.option(
    "--shard-seconds",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Also save them once this many seconds passed since the last save [default: 60].",
)
@click.option("--overwrite", is_flag=True, help="Discard an existing store in --out instead of resuming it.")
@progress_option()
def embed(
    data: Path,
    out: Path,
    model: str,
    weights: Path | None,
    pretrained: bool,
    fmt: str,
    batch_size: int,
    workers: int | None,
    normalize: bool,
    on_corrupt: str,
    device: str,
    shard_size: int | None,
    shard_seconds: float | None,
    overwrite: bool,
    progress: bool,
) -> None:
    """Embed every image of DATA with a backbone and write an embedding store.

    DATA is a class-per-folder tree, a CSV/JSONL manifest (path,label), a COCO JSON file or a YOLO folder
    (images/ + labels/). Re-running the same command resumes: images already embedded are skipped, and a run
    that was killed loses at most one shard (--shard-size images or --shard-seconds of work).
    """
    from frugalvision.data import open_dataset
    from frugalvision.embeddings import extract_embeddings

    shards: dict[str, Any] = {"shard_size": shard_size, "shard_seconds": shard_seconds}
    shards = {k: v for k, v in shards.items() if v is not None}  # left out: the library's default
    # the model first: a bad one is one error line, before any other output
    backbone = _embedder(model, pretrained, weights)
    dataset = open_dataset(data, format=fmt, on_corrupt=on_corrupt)
    click.echo(f"data: {dataset!r}", err=True)
    with data_warnings():
        store = extract_embeddings(
            backbone,
            dataset,
            out,
            batch_size=batch_size,
            num_workers=workers,
            normalize=normalize,
            device=device,
            overwrite=overwrite,
            progress=progress,
            **shards,
        )
    click.echo(f"wrote {len(store)} embeddings of size {store.dim} to {out}")


@cli.command()
@click.argument("store_dir", metavar="STORE", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder of the index to write (replaced atomically).",
)
@click.option(
    "--metric",
    type=click.Choice(["auto", "ip", "l2"]),
    default="auto",
    show_default=True,
    help="ip = inner product (cosine for normalised vectors), l2 = Euclidean; auto picks ip for normalised stores.",
)
@click.option(
    "--kind",
    type=click.Choice(["auto", "flat", "ivf"]),
    default="auto",
    show_default=True,
    help="flat = exact search; ivf = inverted lists, faster for large collections; auto = flat below 100k vectors.",
)
@click.option(
    "--nlist",
    type=click.IntRange(min=1),
    default=None,
    help="Number of IVF lists [default: about 4*sqrt(N)].",
)
def index(store_dir: Path, out: Path, metric: str, kind: str, nlist: int | None) -> None:
    """Build a faiss index of an embedding STORE for fast top-k search."""
    from frugalvision.embeddings import EmbeddingStore
    from frugalvision.index import EmbeddingIndex

    store = EmbeddingStore.load(store_dir)
    chosen = ("ip" if store.normalized else "l2") if metric == "auto" else metric
    idx = EmbeddingIndex.build(
        store.vectors,
        paths=store.paths,
        labels=["|".join(lab) for lab in store.labels],
        metric=chosen,  # type: ignore[arg-type]  # click.Choice guarantees the literal
        kind=kind,  # type: ignore[arg-type]
        nlist=nlist,
        info={k: store.info[k] for k in ("backbone", "data_config", "normalized") if k in store.info},
    )
    idx.save(out)
    click.echo(f"indexed {len(store)} vectors ({chosen}, {idx.kind}) in {out}")


@cli.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-k", "k", default=5, show_default=True, type=click.IntRange(min=1), help="Number of results per query."
)
@click.option(
    "--exclude-self/--include-self",
    default=True,
    show_default=True,
    help="When a query image is itself in the index (the same file, however its path is written), leave it "
    "out of its own results.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--grid",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also save a PNG grid of each query and its results.",
)
@device_option()
def search(
    index_dir: Path,
    images: tuple[Path, ...],
    k: int,
    exclude_self: bool,
    as_json: bool,
    grid: Path | None,
    device: str,
) -> None:
    """Find the K images of INDEX most similar to each of IMAGES.

    The query images are embedded with the backbone and preprocessing recorded in the index.
    """
    import torch

    from frugalvision.bundle import embedder_from_spec
    from frugalvision.data import load_for_transform
    from frugalvision.embeddings import embed_images, resolve_device
    from frugalvision.index import EmbeddingIndex

    idx = EmbeddingIndex.load(index_dir)
    if "backbone" not in idx.info:
        raise StoreError(
            f"index {index_dir} does not record which backbone made it; search it by vector from Python"
        )
    backbone = embedder_from_spec(idx.info["backbone"])
    transform = backbone.transform()
    dev = resolve_device(device)
    backbone.to(dev)
    batch = torch.stack([load_for_transform(p, transform) for p in images])
    vectors = embed_images(backbone, batch, normalize=bool(idx.info.get("normalized", True)), device=dev)
    self_ids = idx.lookup(images) if exclude_self and idx.paths is not None else None
    found = idx.search(vectors, k=k, exclude_ids=self_ids)

    rows: list[dict[str, Any]] = []
    for q, ids, scores in zip(images, found.ids, found.scores, strict=True):
        hits = [
            {
                "rank": r + 1,
                "path": idx.paths[i] if idx.paths else str(i),
                "label": idx.labels[i] if idx.labels else None,
                "score": float(s),
            }
            for r, (i, s) in enumerate(zip(ids, scores, strict=True))
            if i >= 0
        ]
        rows.append({"query": str(q), "results": hits})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        score_name = "similarity" if idx.metric == "ip" else "sq. distance"
        for row in rows:
            click.echo(f"query: {row['query']}")
            for h in row["results"]:
                label = f"  [{h['label']}]" if h["label"] else ""
                click.echo(f"  {h['rank']:>3}. {score_name} {h['score']:.4f}  {h['path']}{label}")
    if grid is not None:
        from frugalvision.plots import save_retrieval_grid

        save_retrieval_grid(
            [r["query"] for r in rows],
            [[h["path"] for h in r["results"]] for r in rows],
            grid,
            scores=[[h["score"] for h in r["results"]] for r in rows],
        )
        click.echo(f"grid: {grid}", err=True)


@cli.command()
@click.argument("store_dir", metavar="STORE_OR_BUNDLE", type=click.Path(path_type=Path))
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="With a model bundle: the labelled images to embed and evaluate (class folders or manifest).",
)
@click.option(
    "-k",
    "ks",
    multiple=True,
    type=click.IntRange(min=1),
    default=(1, 5),
    show_default=True,
    help="Recall@K cut-offs (repeat: -k 1 -k 5 -k 10).",
)
@click.option("--no-nmi", is_flag=True, help="Skip NMI (its k-means is the slow part on big stores).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@workers_option("With --data: data-loading processes [default: one per core, at most 8].")
@progress_option("With --data: show a progress bar.")
def evaluate(
    store_dir: Path,
    data: Path | None,
    ks: tuple[int, ...],
    no_nmi: bool,
    as_json: bool,
    workers: int | None,
    progress: bool,
) -> None:
    """Retrieval metrics of a labelled embedding STORE, or of a model BUNDLE on --data: Recall@K, Precision@1,
    R-Precision, MAP@R, NMI.

    Every labelled image is a query against all the others (leave-one-out); unlabeled images are ignored.

    A multilabel BUNDLE (frugalvision train --task multilabel) gets tagging metrics instead: mAP, and CP/CR/CF1,
    OP/OR/OF1 at its tuned thresholds, at 0.5 and at top-K (the largest -k), with a per-class table. A
    classification BUNDLE gets top-1 / top-K accuracy, balanced accuracy, macro-F1, ECE and NLL (calibrated and
    raw) and a per-class table.
    """
    from frugalvision.bundle import is_bundle
    from frugalvision.embeddings import EmbeddingStore, extract_embeddings
    from frugalvision.metrics import retrieval_metrics
    from frugalvision.metrics.retrieval import NMI_METHOD

    if is_bundle(store_dir):
        if data is None:
            raise click.UsageError(
                f"{store_dir} is a model bundle: pass --data with the labelled images to evaluate it on"
            )
        from frugalvision.bundle import read_bundle_config

        if read_bundle_config(store_dir).get("task") == "classification":
            from frugalvision.cli.classify import evaluate_classification

            evaluate_classification(
                store_dir,
                data,
                as_json=as_json,
                workers=workers,
                progress=progress,
                top_k=max(ks) if ks else 5,
            )
            return
        if read_bundle_config(store_dir).get("task") == "multilabel":
            from frugalvision.cli.tagging import evaluate_tagging

            evaluate_tagging(
                store_dir,
                data,
                as_json=as_json,
                workers=workers,
                progress=progress,
                top_k=max(ks) if ks else 3,
            )
            return
        from frugalvision.data import open_dataset

        model = _embedder(str(store_dir))
        with tempfile.TemporaryDirectory(prefix="frugalvision-eval-") as tmp, data_warnings():
            store = extract_embeddings(
                model, open_dataset(data), Path(tmp) / "store", num_workers=workers, progress=progress
            )
    elif data is not None:
        raise click.UsageError("--data goes with a model bundle; a STORE already holds its embeddings")
    else:
        store = EmbeddingStore.load(store_dir)
    labels = store.label_ids()
    keep = np.flatnonzero(labels >= 0)
    if len(keep) < 2:
        raise StoreError(
            f"{store_dir} has {len(keep)} labelled embeddings; evaluation needs labels on at least 2"
        )
    include = ("recall", "precision_at_1", "r_precision", "map_at_r") + (() if no_nmi else ("nmi",))
    metric: Literal["cosine", "l2"] = "cosine" if store.normalized else "l2"
    result = retrieval_metrics(
        store.vectors[keep], labels[keep], k=tuple(sorted(set(ks))), metric=metric, include=include
    )
    if as_json:
        click.echo(json.dumps({"store": str(store_dir), "count": len(keep), **result}, indent=2))
    else:
        click.echo(
            f"{len(keep)} labelled embeddings, {len(set(labels[keep].tolist()))} classes, metric={metric}"
        )
        for name, value in result.items():
            click.echo(f"  {name:<14} {value:.4f}" + (f"  ({NMI_METHOD})" if name == "nmi" else ""))

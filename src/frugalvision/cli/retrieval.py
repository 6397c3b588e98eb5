"""``frugalvision embed | index | search | evaluate``: the image-search commands."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import click
import numpy as np

from frugalvision.cli._app import cli, data_warnings
from frugalvision.cli._backend import backend_options, check_backend, pgvector_ef_search_option
from frugalvision.cli._options import (
    ModelSettings,
    batch_size_option,
    data_option,
    device_option,
    format_option,
    json_option,
    model_options,
    on_corrupt_option,
    out_option,
    progress_option,
    workers_option,
)
from frugalvision.cli.classify import evaluate_classification
from frugalvision.cli.detection import evaluate_detection
from frugalvision.cli.tagging import evaluate_tagging
from frugalvision.errors import FrugalVisionError, StoreError


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
@click.argument("inputs", metavar="DATA | SHARD...", nargs=-1, required=True, type=click.Path(path_type=Path))
@out_option(
    "Folder of the embedding store to write (created; resumed if it exists). Required unless --merge.",
    kind="any",
    required=False,
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Embed only shard I of N (numbered from 0) of DATA: a deterministic slice, so N workers started by any "
    "launcher (SLURM array, Kubernetes indexed job) cover every image exactly once. Join them with --merge.",
)
@click.option(
    "--shard-mode",
    type=click.Choice(["contiguous", "strided"]),
    default="contiguous",
    help="contiguous = blocks of the data set's listing; strided = every N-th image.",
)
@click.option(
    "--merge",
    "merge_out",
    default=None,
    type=click.Path(path_type=Path),
    metavar="OUT",
    help="Join the shard stores given as arguments (SHARD...) into the store OUT, in the data set's order; "
    "a gap, an overlap or shards of another model or data set are refused.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Run on Ray Data: decoding in tasks, the backbone in --ray-workers actors. Alone: start Ray on this "
    "machine (2 CPUs); with an ADDRESS (auto, ray://head:10001): join that cluster, whose workers must read "
    "DATA's paths. Needs pip install 'frugalvision[ray]'.",
)
@click.option(
    "--ray-workers",
    default=2,
    type=click.IntRange(min=1),
    help="With --ray: backbone actors.",
)
@model_options(
    model_help="timm model name (with optional pretrained tag), an offline backbone name, or a model bundle folder from `frugalvision train`."
)
@format_option(
    ["auto", "folder", "manifest", "coco", "yolo"],
    "How to read DATA: class-per-folder tree, CSV/JSONL manifest, COCO JSON, YOLO folder.",
)
@batch_size_option()
@workers_option()
@click.option(
    "--normalize/--no-normalize",
    default=True,
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
    inputs: tuple[Path, ...],
    out: Path | None,
    shard: str | None,
    shard_mode: str,
    merge_out: Path | None,
    ray_address: str | None,
    ray_workers: int,
    model: ModelSettings,
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
    that was killed loses at most one part (--shard-size images or --shard-seconds of work).

    On several machines: `embed DATA --shard I/N -o shard-I` on each worker, then
    `embed --merge OUT shard-0 ... shard-(N-1)`.
    """
    from frugalvision.data import open_dataset
    from frugalvision.embeddings import extract_embeddings, merge_shards, parse_shard

    if merge_out is not None:
        if out is not None or shard is not None:
            raise click.UsageError("--merge OUT takes shard stores as arguments; leave out --out and --shard")
        merged = merge_shards(inputs, merge_out)
        click.echo(
            f"merged {len(inputs)} shards: {len(merged)} embeddings of size {merged.dim} in {merge_out}"
        )
        return
    if len(inputs) != 1:
        raise click.UsageError(
            f"give one DATA to embed (got {len(inputs)} arguments); several go with --merge"
        )
    data = inputs[0]
    if not data.exists():
        raise click.BadParameter(f"{data} does not exist", param_hint="DATA")
    if out is None:
        raise click.UsageError("Missing option '--out' / '-o'.")
    try:
        shard_spec = parse_shard(shard) if shard is not None else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--shard") from e

    shards: dict[str, Any] = {"shard_size": shard_size, "shard_seconds": shard_seconds}
    shards = {k: v for k, v in shards.items() if v is not None}  # left out: the library's default
    # the model first: a bad one is one error line, before any other output
    backbone = _embedder(model.name, model.pretrained, model.weights)
    dataset = open_dataset(data, format=fmt, on_corrupt=on_corrupt)
    click.echo(f"data: {dataset!r}", err=True)
    common: dict[str, Any] = {
        "batch_size": batch_size,
        "normalize": normalize,
        "device": device,
        "overwrite": overwrite,
        "progress": progress,
        "shard": shard_spec,
        "shard_mode": shard_mode,
        **shards,
    }
    with data_warnings():
        if ray_address is not None:
            from frugalvision.embeddings.ray_extract import extract_embeddings_ray

            if workers is not None:
                raise click.UsageError("--workers sets DataLoader processes; with --ray use --ray-workers")
            address = None if ray_address == "local" else ray_address
            store = extract_embeddings_ray(
                backbone, dataset, out, address=address, workers=ray_workers, **common
            )
        else:
            store = extract_embeddings(backbone, dataset, out, num_workers=workers, **common)
    part = f" (shard {shard_spec[0]}/{shard_spec[1]}, {shard_mode})" if shard_spec else ""
    click.echo(f"wrote {len(store)} embeddings of size {store.dim} to {out}{part}")


@cli.command()
@click.argument("store_dir", metavar="STORE", type=click.Path(path_type=Path))
@out_option(
    "Folder of the index to write (replaced atomically). Required with --backend faiss.",
    kind="any",
    required=False,
)
@click.option(
    "--metric",
    type=click.Choice(["auto", "ip", "l2"]),
    default="auto",
    help="ip = inner product (cosine for normalised vectors), l2 = Euclidean; auto picks ip for normalised stores.",
)
@click.option(
    "--kind",
    type=click.Choice(["auto", "flat", "ivf", "ivfpq", "hnsw"]),
    default="auto",
    help="flat = exact search; ivf = inverted lists; ivfpq = inverted lists of compressed vectors, on disk and "
    "memory-mapped (for collections larger than memory); hnsw = graph, fast single queries; auto = flat below "
    "100k vectors, ivf above.",
)
@click.option(
    "--nlist",
    type=click.IntRange(min=1),
    default=None,
    help="Number of IVF lists (ivf, ivfpq) [default: about 4*sqrt(N)].",
)
@click.option(
    "--nprobe",
    type=click.IntRange(min=1),
    default=None,
    help="IVF lists scanned per query [default: a 32nd of the lists, at least 16, more for k > 10].",
)
@click.option(
    "--pq-m",
    type=click.IntRange(min=1),
    default=None,
    help="ivfpq: bytes per vector, dividing the dimension [default: one per 4 dimensions].",
)
@click.option(
    "--hnsw-m", type=click.IntRange(min=2), default=None, help="hnsw: links per vector [default: 32]."
)
@click.option(
    "--ef-construction",
    type=click.IntRange(min=1),
    default=None,
    help="hnsw: candidates per inserted vector while building [default: 128].",
)
@click.option(
    "--ef-search",
    type=click.IntRange(min=1),
    default=None,
    help="hnsw: candidates per query [default: 10 k, between 64 and 1024].",
)
@click.option(
    "--rerank/--no-rerank",
    default=False,
    help="Approximate kinds: keep the exact vectors (vectors.npy) and re-rank the candidates with them.",
)
@click.option(
    "--rerank-factor",
    type=click.IntRange(min=1),
    default=None,
    help="With --rerank: candidates re-ranked per wanted hit [default: 20].",
)
@click.option(
    "--recall-queries",
    type=click.IntRange(min=0),
    default=None,
    help="Approximate kinds: vectors used as queries to measure recall@10 against exact search "
    "(0 = skip) [default: 1000].",
)
@backend_options
@click.option(
    "--store-id",
    default=None,
    help="With --backend pgvector: the name of this store in the table (its rows are replaced when indexed "
    "again; filter with --where store=...) [default: the STORE folder's name].",
)
def index(
    store_dir: Path,
    out: Path | None,
    metric: str,
    kind: str,
    nlist: int | None,
    nprobe: int | None,
    pq_m: int | None,
    hnsw_m: int | None,
    ef_construction: int | None,
    ef_search: int | None,
    rerank: bool,
    rerank_factor: int | None,
    recall_queries: int | None,
    backend: str,
    dsn: str | None,
    table: str,
    store_id: str | None,
) -> None:
    """Build a faiss index of an embedding STORE for fast top-k search, or put the STORE into a PostgreSQL table
    (--backend pgvector: vectors, paths, labels and store id, with an HNSW index; several stores share a table).

    The approximate faiss kinds print (and record in the index) their recall@10 against exact search.
    """
    from frugalvision.embeddings import EmbeddingStore

    check_backend(backend, dsn)
    if backend == "faiss" and out is None:
        raise click.UsageError("Missing option '--out' / '-o'.")
    # ivfpq reads the vectors shard by shard: a memory-mapped store keeps memory bounded whatever its size
    store = EmbeddingStore.load(store_dir, mmap=backend == "faiss" and kind == "ivfpq")
    chosen = ("ip" if store.normalized else "l2") if metric == "auto" else metric
    if backend == "pgvector":
        from frugalvision.vectordb import PgVectorIndex, redact_dsn

        faiss_only = (nlist, nprobe, pq_m, hnsw_m, ef_construction, ef_search, rerank_factor, recall_queries)
        if out is not None or kind != "auto" or rerank or any(v is not None for v in faiss_only):
            raise click.UsageError("--out, --kind and the faiss index options are for --backend faiss")
        assert dsn is not None  # check_backend
        name = store_id or Path(store_dir).resolve().name
        with PgVectorIndex.add(
            dsn,
            store.vectors,
            store.paths,
            store.labels,
            store_id=name,
            table=table,
            metric=chosen,
            info={k: store.info[k] for k in ("backbone", "data_config", "normalized") if k in store.info},
        ) as db:
            total = len(db)
        click.echo(
            f"indexed {len(store)} vectors ({chosen}, pgvector hnsw) as store {name!r} in table {table!r} of "
            f"{redact_dsn(dsn)} ({total} rows in all)"
        )
        return
    given = {"nlist": nlist, "nprobe": nprobe, "pq_m": pq_m, "hnsw_m": hnsw_m, "ef_search": ef_search}
    given.update(ef_construction=ef_construction, rerank_factor=rerank_factor, recall_queries=recall_queries)
    if rerank_factor is not None and not rerank:
        raise click.UsageError("--rerank-factor applies with --rerank")
    options: dict[str, Any] = {
        k: v for k, v in given.items() if v is not None
    }  # left out: the library's default
    common: dict[str, Any] = {
        "paths": store.paths,
        "labels": ["|".join(lab) for lab in store.labels],
        "metric": chosen,
        "rerank": rerank,
        "info": {k: store.info[k] for k in ("backbone", "data_config", "normalized") if k in store.info},
    }
    from frugalvision.index import EmbeddingIndex, build_on_disk

    assert out is not None  # checked above for the faiss backend
    try:
        if kind == "ivfpq":
            idx = build_on_disk(store.vectors, out, **common, **options)
        else:
            idx = EmbeddingIndex.build(store.vectors, kind=kind, **common, **options)  # type: ignore[arg-type]
            idx.save(out)
    except FrugalVisionError:  # a store / disk error: printed as one line by the CLI, exit 1
        raise
    except ValueError as err:  # an option that does not fit the kind or the data
        raise click.UsageError(str(err)) from err
    settings = ", ".join(f"{name} {value}" for name, value in idx.effective(10).items() if value > 1)
    recall = (
        f"; recall@10 {idx.recall['recall_at_10']:.3f} on {idx.recall['queries']} queries ({settings})"
        if idx.recall
        else ""
    )
    click.echo(f"indexed {len(store)} vectors ({chosen}, {idx.kind}) in {out}{recall}")


@cli.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(path_type=Path))
@click.argument("images", metavar="IMAGES...", nargs=-1, type=click.Path(path_type=Path))
@click.option("-k", "k", default=5, type=click.IntRange(min=1), help="Number of results per query.")
@click.option(
    "--exclude-self/--include-self",
    default=True,
    help="When a query image is itself in the index (the same file, however its path is written), leave it "
    "out of its own results.",
)
@json_option()
@click.option(
    "--grid",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also save a PNG grid of each query and its results.",
)
@device_option()
@backend_options
@pgvector_ef_search_option
@click.option(
    "--where",
    multiple=True,
    metavar="KEY=VALUE",
    help="With --backend pgvector: only hits whose label / store / path is VALUE (repeatable; values of one key "
    "are OR-ed, keys AND-ed), e.g. --where label=cat --where store=photos.",
)
def search(
    index_dir: Path,
    images: tuple[Path, ...],
    k: int,
    exclude_self: bool,
    as_json: bool,
    grid: Path | None,
    device: str,
    backend: str,
    dsn: str | None,
    table: str,
    ef_search: int | None,
    where: tuple[str, ...],
) -> None:
    """Find the K images of INDEX most similar to each of IMAGES.

    The query images are embedded with the backbone and preprocessing recorded in the index. With --backend
    pgvector there is no INDEX folder (the table is --dsn/--table): every argument is a query image.
    """
    from frugalvision.bundle import QueryEmbedder

    check_backend(backend, dsn)
    idx: Any
    if backend == "pgvector":
        from frugalvision.vectordb import PgVectorIndex, parse_where

        images = (index_dir, *images)
        try:
            filters = parse_where(where)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--where") from e
        assert dsn is not None  # check_backend
        idx = PgVectorIndex.open(dsn, table, ef_search=ef_search)
        source = f"table {table!r}"
    else:
        from frugalvision.index import EmbeddingIndex

        if not images:
            raise click.UsageError("Missing argument 'IMAGES...'.")
        if where:
            raise click.UsageError("--where filters a --backend pgvector table")
        if ef_search is not None:
            raise click.UsageError("--ef-search applies to --backend pgvector")
        idx = EmbeddingIndex.load(index_dir)
        source = f"index {index_dir}"
    if "backbone" not in idx.info:
        raise StoreError(f"{source} does not record which backbone made it; search it by vector from Python")
    vectors = QueryEmbedder(idx.info, device)(images)
    rows: list[dict[str, Any]] = []
    if backend == "pgvector":
        own = [str(Path(p).resolve()) for p in images] if exclude_self else None
        with idx:
            found = idx.search(vectors, k, where=filters, exclude_paths=own)
        for q, ids, scores, hit_paths, hit_labels in zip(
            images, found.ids, found.scores, found.paths, found.labels, strict=True
        ):
            hits = [
                {
                    "rank": r + 1,
                    "path": hit_paths[r],
                    "label": hit_labels[r] or None,
                    "score": float(scores[r]),
                }
                for r in range(len(ids))
                if ids[r] >= 0
            ]
            rows.append({"query": str(q), "results": hits})
    else:
        self_ids = idx.lookup(images) if exclude_self and idx.paths is not None else None
        found = idx.search(vectors, k=k, exclude_ids=self_ids)
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


#: A model bundle's task -> the function that evaluates it on --data, and which options of ``evaluate`` it takes
#: (beside --json); an embedding bundle is evaluated by ``evaluate`` itself (retrieval metrics).
_TASK_EVALUATORS: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "classification": (evaluate_classification, ("workers", "progress", "top_k")),
    "multilabel": (evaluate_tagging, ("workers", "progress", "top_k")),
    "detection": (evaluate_detection, ("report", "split")),
}


@cli.command()
@click.argument("store_dir", metavar="STORE_OR_BUNDLE", type=click.Path(path_type=Path))
@data_option("With a model bundle: the labelled images to embed and evaluate (class folders or manifest).")
@click.option(
    "-k",
    "ks",
    multiple=True,
    type=click.IntRange(min=1),
    default=(1, 5),
    help="Recall@K cut-offs (repeat: -k 1 -k 5 -k 10).",
)
@click.option("--no-nmi", is_flag=True, help="Skip NMI (its k-means is the slow part on big stores).")
@json_option()
@workers_option("With --data: data-loading processes [default: one per core, at most 8].")
@progress_option("With --data: show a progress bar.")
@click.option(
    "--report",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Detection bundles: folder for report.md, PR curves and confusion matrix PNGs [default: BUNDLE-eval].",
)
@click.option(
    "--split",
    default=None,
    help="Detection bundles on a PASCAL-VOC folder: the ImageSets/Main list to evaluate on (e.g. test).",
)
def evaluate(
    store_dir: Path,
    data: Path | None,
    ks: tuple[int, ...],
    no_nmi: bool,
    as_json: bool,
    workers: int | None,
    progress: bool,
    report: Path | None,
    split: str | None,
) -> None:
    """Retrieval metrics of a labelled embedding STORE, or of a model BUNDLE on --data: Recall@K, Precision@1,
    R-Precision, MAP@R, NMI.

    Every labelled image is a query against all the others (leave-one-out); unlabeled images are ignored.

    A multilabel BUNDLE (frugalvision train --task multilabel) gets tagging metrics instead: mAP, and CP/CR/CF1,
    OP/OR/OF1 at its tuned thresholds, at 0.5 and at top-K (the largest -k), with a per-class table. A
    classification BUNDLE gets top-1 / top-K accuracy, balanced accuracy, macro-F1, ECE and NLL (calibrated and
    raw) and a per-class table.


    A detection BUNDLE (frugalvision train --task detection) gets COCO metrics on --data (COCO JSON, YOLO or VOC):
    mAP, AP50, AP75, AP S/M/L, per-class AP, and a report folder with PR curves and a confusion matrix.
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

        task = read_bundle_config(store_dir).get("task")
        if task in _TASK_EVALUATORS:
            evaluate_task, takes = _TASK_EVALUATORS[task]
            given = {
                "workers": workers,
                "progress": progress,
                "top_k": max(ks),
                "report": report,
                "split": split,
            }
            evaluate_task(store_dir, data, as_json=as_json, **{name: given[name] for name in takes})
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

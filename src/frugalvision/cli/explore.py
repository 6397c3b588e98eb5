"""``frugalvision explore``: the local web app over a store or index (:mod:`frugalvision.explore`)."""

from __future__ import annotations

from pathlib import Path

import click

from frugalvision.cli._app import cli
from frugalvision.cli._listen import allowed_host_option, allowed_hosts_for, host_option
from frugalvision.cli._options import device_option, duplicate_threshold_option


@cli.command()
@click.argument("source", metavar="STORE_OR_INDEX", type=click.Path(path_type=Path))
@click.option(
    "--labels",
    "labels",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Label manifest to review (.csv with path,label[,prediction,score,margin], e.g. from `frugalvision "
    "label`, or .jsonl); the only file the explorer writes, atomically, with a change log beside it.",
)
@click.option(
    "--ood",
    "ood",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="OOD detector (`frugalvision ood fit`) fitted on these embeddings: colour by OOD score, most-OOD view.",
)
@click.option("--duplicates", is_flag=True, help="Find near-duplicate groups (colour and view).")
@duplicate_threshold_option(
    "--duplicate-threshold",
    "Cosine from which two images are near duplicates [default: frugalvision.curation.NEAR_DUPLICATE_THRESHOLD].",
)
@click.option(
    "--layout",
    type=click.Choice(["auto", "umap", "pca"]),
    default="auto",
    help="Map layout: umap (needs umap-learn: pip install 'frugalvision[explore]'), pca, or auto (umap when "
    "installed). Computed once and cached in STORE_OR_INDEX/.explore/.",
)
@host_option
@click.option("--port", default=8765, type=click.IntRange(0, 65535), help="TCP port.")
@allowed_host_option
@device_option("Device that embeds uploaded photos.")
def explore(
    source: Path,
    labels: Path | None,
    ood: Path | None,
    duplicates: bool,
    duplicate_threshold: float | None,
    layout: str,
    host: str,
    port: int,
    allowed_host: tuple[str, ...],
    device: str,
) -> None:
    """Open a local web app on STORE_OR_INDEX: a map of the embeddings, a gallery, nearest neighbours (click an
    image or upload a photo), label review with undo, and the most out-of-distribution / duplicated images."""
    import uvicorn

    from frugalvision.explore import (
        LOCAL_HOSTS,
        Collection,
        ExploreState,
        LabelManifest,
        create_app,
        duplicate_group_ids,
        ood_scores,
    )

    collection = Collection.open(source)
    manifest = LabelManifest(labels) if labels is not None else None
    ood_values = groups = None
    if ood is not None or duplicates:
        vectors = collection.vectors()
        if ood is not None:
            ood_values, name = ood_scores(ood, vectors)
            click.echo(f"OOD: minus the detector's {name} score (higher = stranger)", err=True)
        if duplicates:
            groups = duplicate_group_ids(vectors, duplicate_threshold)
            click.echo(
                f"duplicates: {int(groups.max()) + 1} group(s), {int((groups >= 0).sum())} images", err=True
            )
        del vectors
    click.echo(f"laying out {len(collection)} points ({layout}; cached after the first time)...", err=True)
    state = ExploreState.build(collection, manifest=manifest, ood=ood_values, groups=groups, layout=layout)
    hosts = allowed_hosts_for(host, allowed_host, LOCAL_HOSTS)
    app = create_app(state, allowed_hosts=hosts, device=device)
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"frugalvision explore: http://{shown}:{port}/  ({len(collection)} images; Ctrl+C stops)", err=True
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", workers=1)

"""``frugalvision explore``: a local web app to look at a data set through its embeddings and fix its labels.

A map of the embeddings (UMAP, or PCA without ``umap-learn``; WebGL), a gallery of any selection, nearest
neighbours of a clicked or uploaded image, review of a label manifest (atomic writes, change log, undo) and quality
views (most out-of-distribution images, duplicate groups). Served on 127.0.0.1 by default; see
:mod:`frugalvision.explore.app` for the routes and the security rules.

Example (Python)::

    from frugalvision.explore import Collection, ExploreState, create_app
    state = ExploreState.build(Collection.open("store/"))
    app = create_app(state)  # run with uvicorn
"""

from frugalvision.explore.app import LOCAL_HOSTS, ExploreState, create_app
from frugalvision.explore.collection import Collection
from frugalvision.explore.layout import compute_layout
from frugalvision.explore.quality import duplicate_group_ids, ood_scores
from frugalvision.explore.review import LabelManifest

__all__ = [
    "LOCAL_HOSTS",
    "Collection",
    "ExploreState",
    "LabelManifest",
    "compute_layout",
    "create_app",
    "duplicate_group_ids",
    "ood_scores",
]

"""Data curation with embeddings: duplicates, balanced subset selection, data-set comparison.

- :func:`exact_duplicates` (same bytes) and :func:`near_duplicates` (cosine >= threshold, faiss range search).
- :func:`select_balanced`: (hierarchical) k-means + balanced sampling of a subset of size ``n``.
- :func:`compare_datasets`: clusters of the union of two sets that one of them dominates.
"""

from frugalvision.curation._draw import save_contact_sheet
from frugalvision.curation.clustering import (
    HierarchicalClusters,
    balanced_quotas,
    default_clusters,
    hierarchical_kmeans,
    kmeans,
    select_balanced,
)
from frugalvision.curation.compare import DatasetComparison, compare_datasets, write_comparison_report
from frugalvision.curation.duplicates import (
    NEAR_DUPLICATE_THRESHOLD,
    DuplicatePairs,
    duplicate_groups,
    exact_duplicates,
    file_digest,
    near_duplicates,
    save_pair_grid,
    write_pairs_csv,
)

__all__ = [
    "NEAR_DUPLICATE_THRESHOLD",
    "DatasetComparison",
    "DuplicatePairs",
    "HierarchicalClusters",
    "balanced_quotas",
    "compare_datasets",
    "default_clusters",
    "duplicate_groups",
    "exact_duplicates",
    "file_digest",
    "hierarchical_kmeans",
    "kmeans",
    "near_duplicates",
    "save_contact_sheet",
    "save_pair_grid",
    "select_balanced",
    "write_comparison_report",
    "write_pairs_csv",
]

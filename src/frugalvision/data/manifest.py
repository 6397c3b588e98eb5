"""Read a manifest listing image paths and their labels, as CSV or JSON Lines."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from frugalvision._checks import check_choice
from frugalvision.data._common import check_dir, check_file, raise_missing, short_list
from frugalvision.data.dataset import ImageDataset, OnCorrupt, Sample
from frugalvision.errors import DataError

__all__ = ["read_manifest"]

_CSV_SUFFIXES = (".csv",)
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_LABEL_FIELDS = ("label", "labels")


@dataclass(frozen=True)
class _Row:
    line: int
    path: str
    labels: tuple[str, ...]
    field: str  # the label column/field this row used ("label", "labels", or "" when absent)
    unknown: tuple[str, ...] = ()  # classes not annotated for this image (column/field "unknown")


def _dedupe(labels: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(labels))


def _split_labels(text: str, where: str, field: str) -> tuple[str, ...]:
    text = text.strip()
    if not text:
        return ()
    parts = [t.strip() for t in text.split("|")]
    if any(not t for t in parts):
        raise DataError(f"empty label in {text!r} at {where} (field '{field}'); separate labels with '|'")
    return _dedupe(parts)


def _read_csv(path: Path) -> list[_Row]:
    rows: list[_Row] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(f"manifest {path} is empty: expected a header line such as 'path,label'")
        names = [h.strip() for h in header]
        if len(set(names)) != len(names):
            raise DataError(f"{path}:1: repeated column name in header {names}")
        if "path" not in names:
            raise DataError(
                f"{path}:1: no 'path' column in header {names}; expected 'path,label' or 'path,labels'"
            )
        label_fields = [c for c in _LABEL_FIELDS if c in names]
        if len(label_fields) > 1:
            raise DataError(f"{path}:1: header has both 'label' and 'labels' columns; keep one")
        field = label_fields[0] if label_fields else ""
        i_path = names.index("path")
        i_label = names.index(field) if field else -1
        i_unknown = names.index("unknown") if "unknown" in names else -1
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path}:{line}"
            if len(row) != len(names):
                raise DataError(
                    f"{where}: expected {len(names)} fields ({','.join(names)}), got {len(row)}; "
                    "quote paths that contain commas"
                )
            labels = _split_labels(row[i_label], where, field) if field else ()
            unknown = _split_labels(row[i_unknown], where, "unknown") if i_unknown >= 0 else ()
            rows.append(_Row(line, row[i_path].strip(), labels, field, unknown))
    return rows


def _read_jsonl(path: Path) -> list[_Row]:
    rows: list[_Row] = []
    with path.open(encoding="utf-8-sig") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"malformed JSON at {where}, column {exc.colno}: {exc.msg}") from exc
            if not isinstance(obj, dict):
                raise DataError(
                    f'{where}: expected a JSON object such as {{"path": ...}}, got {text.strip()!r:.80}'
                )
            if "path" not in obj:
                raise DataError(f"{where}: missing field 'path'")
            if not isinstance(obj["path"], str):
                raise DataError(f"{where}: field 'path' must be a string, got {obj['path']!r}")
            if "label" in obj and "labels" in obj:
                raise DataError(f"{where}: give either field 'label' or field 'labels', not both")
            field = ""
            labels: tuple[str, ...] = ()
            if "label" in obj:
                field, value = "label", obj["label"]
                if value is not None and not isinstance(value, str):
                    raise DataError(f"{where}: field 'label' must be a string or null, got {value!r}")
                labels = (value.strip(),) if value and value.strip() else ()
            elif "labels" in obj:
                field, value = "labels", obj["labels"]
                value = [] if value is None else value
                if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                    raise DataError(
                        f"{where}: field 'labels' must be a list of non-empty strings, got {value!r}"
                    )
                labels = _dedupe([v.strip() for v in value])
            unknown = obj.get("unknown") or []
            if not isinstance(unknown, list) or not all(isinstance(v, str) and v.strip() for v in unknown):
                raise DataError(
                    f"{where}: field 'unknown' must be a list of non-empty strings, got {unknown!r}"
                )
            rows.append(
                _Row(line_no, obj["path"].strip(), labels, field, _dedupe([v.strip() for v in unknown]))
            )
    return rows


def _check_classes(classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise TypeError(f"classes must be a sequence of class-name strings, got {classes!r:.200}")
    names = list(classes)
    if len(set(names)) != len(names):
        raise ValueError(
            f"classes must be unique, repeated: {sorted({c for c in names if names.count(c) > 1})}"
        )
    return names


def read_manifest(
    path: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    on_corrupt: OnCorrupt = "skip",
) -> ImageDataset:
    """Read images and labels listed in a CSV or JSON Lines manifest.

    CSV (``.csv``): a header with a ``path`` column and optionally a ``label`` or ``labels`` column; a
    label cell may hold several labels separated by ``|`` (``cat|dog``) or be empty (unlabeled). Other
    columns are ignored. JSON Lines (``.jsonl``/``.ndjson``): one object per line,
    ``{"path": "a.jpg", "label": "cat"}`` or ``{"path": "a.jpg", "labels": ["cat", "dog"]}``; ``null``
    or a missing label field means unlabeled; other fields are ignored. Blank lines are skipped.

    Partially annotated multi-label data add an ``unknown`` column (``bird|car``) or field
    (``"unknown": ["bird", "car"]``): the classes nobody checked for that image. They are neither present nor
    absent (target -1 in :meth:`ImageDataset.target_matrix`); every class in neither list is absent.

    Relative paths resolve against ``root``, or else the manifest's folder. A path listed twice is an
    error (merge its labels into one row instead), since a duplicate would silently count one image twice
    in evaluation. The data set is multi-label if the manifest uses the ``labels`` column/field or any
    row has more than one label. Samples keep the manifest's order; a sample's first label is its primary.

    Args:
        path: the manifest file.
        classes: the allowed class names, in label-index order. If ``None``, the sorted union of the
            labels found.
        root: folder that relative image paths are resolved against.
        on_corrupt: ``"skip"`` or ``"fail"``; see :class:`ImageDataset`.

    Raises:
        DataError: the manifest is missing, empty or malformed, a label is not in ``classes``, a path is
            listed twice, or image files do not exist. Messages name the file and line.

    Example:
        >>> ds = read_manifest("train.csv", classes=["cat", "dog"])  # doctest: +SKIP
    """
    check_choice(on_corrupt, ("skip", "fail"), "on_corrupt")
    path = check_file(path, "manifest")
    known = _check_classes(classes) if classes is not None else None
    base = check_dir(root, "manifest root folder") if root is not None else path.parent
    suffix = path.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        rows = _read_csv(path)
    elif suffix in _JSONL_SUFFIXES:
        rows = _read_jsonl(path)
    else:
        raise DataError(
            f"cannot read manifest {path}: unknown extension {path.suffix!r}; "
            f"expected one of {', '.join(_CSV_SUFFIXES + _JSONL_SUFFIXES)}"
        )
    if not rows:
        raise DataError(f"manifest {path} lists no images")

    if known is None:
        known = sorted({label for row in rows for label in (*row.labels, *row.unknown)})
    index = {name: i for i, name in enumerate(known)}
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    missing: list[str] = []
    for row in rows:
        where = f"{path}:{row.line}"
        if not row.path:
            raise DataError(f"{where}: empty image path")
        for label, field in [(x, row.field) for x in row.labels] + [(x, "unknown") for x in row.unknown]:
            if label not in index:
                raise DataError(
                    f"unknown label {label!r} at {where} (field '{field}'); "
                    f"known labels: {short_list(known, 20)}"
                )
        both = [label for label in row.unknown if label in row.labels]
        if both:
            raise DataError(f"{where}: label {both[0]!r} is listed both as a label and as unknown")
        full = Path(os.path.abspath(base / row.path))
        key = os.path.normcase(str(full))
        if key in seen:
            raise DataError(
                f"duplicate image path {row.path!r} at {where} (first listed at line {seen[key]}); "
                "list each image once, with all its labels separated by '|'"
            )
        seen[key] = row.line
        if not full.is_file():
            missing.append(f"line {row.line}: {full}")
        samples.append(
            Sample(
                path=full,
                labels=tuple(index[label] for label in row.labels),
                unknown=tuple(index[label] for label in row.unknown),
            )
        )
    raise_missing(missing, path)
    multilabel = any(row.field == "labels" or len(row.labels) > 1 or row.unknown for row in rows)
    return ImageDataset(
        samples, known, on_corrupt=on_corrupt, multilabel=multilabel, source=f"manifest {path}"
    )

"""Review of a label manifest: accept, correct or mark unknown, written atomically, with a change log and undo.

The manifest is a CSV (a ``path`` and a ``label`` column, e.g. from ``frugalvision label``: ``path, label,
prediction, score, margin``) or JSON Lines (``{"path": ..., "label": ...}``). Every other column or field is kept
as it was. A decision sets the ``label`` and a ``review`` column/field (``accepted``, ``corrected``, ``unknown``):

* **accept**: ``label`` stays, or becomes the ``prediction`` where it was empty;
* **correct**: ``label`` becomes the class given;
* **unknown**: ``label`` becomes empty (unlabeled: the image trains nothing).

Each decision rewrites the manifest atomically (:func:`frugalvision._fs.write_text_atomic`) and appends one JSON
line to ``<manifest>.changes.jsonl``: ``{"id", "time", "action", "rows": [{"path", "before", "after"}]}``.
**Undo** restores the ``before`` values of the latest change not undone yet and logs ``{"action": "undo",
"undoes": id}``; the log is read again at start, so undo works across restarts and nothing is lost.

The review queue lists the rows not reviewed yet, the most uncertain first: by ascending ``margin``, else
``score``, else in file order.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from frugalvision._fs import write_text_atomic
from frugalvision.errors import DataError

__all__ = ["ACTIONS", "LabelManifest", "ReviewAction"]

ReviewAction = Literal["accept", "correct", "unknown"]
ACTIONS: tuple[str, ...] = ("accept", "correct", "unknown")
_STATE = {"accept": "accepted", "correct": "corrected", "unknown": "unknown"}
_FIELDS = ("label", "review")


@dataclass
class _Row:
    line: int
    path: str
    data: dict[str, Any]  # every column/field of the row, as read


class LabelManifest:
    """A label manifest open for review (see the module docstring).

    Args:
        path: the ``.csv`` or ``.jsonl`` manifest; the only file the explorer writes (with its change log).

    Raises:
        DataError: missing file, unknown extension, no ``path`` / ``label`` column, a multi-label
            ``labels`` column, malformed line (the message names the file and line).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"label manifest {self.path} does not exist")
        self.log_path = self.path.with_name(self.path.name + ".changes.jsonl")
        suffix = self.path.suffix.lower()
        if suffix not in (".csv", ".jsonl", ".ndjson"):
            raise DataError(f"cannot review {self.path}: expected a .csv or .jsonl manifest, got {suffix!r}")
        self.kind = "csv" if suffix == ".csv" else "jsonl"
        self.columns: list[str] = []
        self.rows: list[_Row] = self._read_csv() if self.kind == "csv" else self._read_jsonl()
        self._by_real = {os.path.realpath(self.path.parent / r.path): i for i, r in enumerate(self.rows)}
        self._log = self._read_log()

    # --------------------------------------------------------------------------------------------- read
    def _read_csv(self) -> list[_Row]:
        with self.path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"label manifest {self.path} is empty: expected a header 'path,label'")
            names = [h.strip() for h in header]
            self._check_columns(names, f"{self.path}:1")
            rows = []
            for row in reader:
                if not any(c.strip() for c in row):
                    continue
                if len(row) != len(names):
                    raise DataError(
                        f"{self.path}:{reader.line_num}: expected {len(names)} fields, got {len(row)}"
                    )
                data = dict(zip(names, row, strict=True))
                rows.append(_Row(reader.line_num, data["path"].strip(), data))
        self.columns = names + [c for c in _FIELDS if c not in names]
        return rows

    def _read_jsonl(self) -> list[_Row]:
        rows, names = [], ["path", "label"]
        with self.path.open(encoding="utf-8-sig") as f:
            for line, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(f"{self.path}:{line}: malformed JSON ({e.msg})") from e
                if not isinstance(obj, dict) or not isinstance(obj.get("path"), str):
                    raise DataError(f"{self.path}:{line}: expected an object with a string field 'path'")
                self._check_columns(list(obj), f"{self.path}:{line}", need_label=False)
                label = obj.get("label")
                if label is not None and not isinstance(label, str):
                    raise DataError(
                        f"{self.path}:{line}: field 'label' must be a string or null, got {label!r}"
                    )
                names += [k for k in obj if k not in names]
                rows.append(_Row(line, obj["path"].strip(), obj))
        self.columns = names + [c for c in _FIELDS if c not in names]
        return rows

    def _check_columns(self, names: list[str], where: str, *, need_label: bool = True) -> None:
        if "labels" in names:
            raise DataError(
                f"{where}: the explorer reviews single-label manifests (a 'label' column); this one has 'labels'"
            )
        if "path" not in names or (need_label and "label" not in names):
            raise DataError(f"{where}: a label manifest needs 'path' and 'label' columns, got {names}")

    def _read_log(self) -> list[dict[str, Any]]:
        if not self.log_path.is_file():
            return []
        entries = []
        with self.log_path.open(encoding="utf-8") as f:
            for line, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    entries.append(json.loads(text))
                except json.JSONDecodeError as e:
                    raise DataError(f"{self.log_path}:{line}: malformed change-log line ({e.msg})") from e
        return entries

    # -------------------------------------------------------------------------------------------- query
    def __len__(self) -> int:
        return len(self.rows)

    def row_of(self, image: str) -> int:
        """The manifest row of an image file (paths compared resolved), ``-1`` if it is not listed."""
        return self._by_real.get(os.path.realpath(image), -1)

    def file_of(self, row: int) -> str:
        """The image file of manifest ``row`` (relative paths resolve against the manifest's folder)."""
        return os.path.realpath(self.path.parent / self.rows[row].path)

    def get(self, row: int, name: str) -> str:
        value = self.rows[row].data.get(name)
        return "" if value is None else str(value)

    def _number(self, row: int, name: str) -> float | None:
        try:
            return float(self.get(row, name))
        except ValueError:
            return None

    def queue(self) -> list[int]:
        """Rows not reviewed yet, the most uncertain first (ascending margin, else score, else file order)."""
        key = "margin" if "margin" in self.columns else ("score" if "score" in self.columns else None)
        todo = [i for i in range(len(self.rows)) if not self.get(i, "review")]

        def uncertainty(i: int) -> tuple[float, int]:
            value = self._number(i, key) if key else None
            return (value if value is not None else float("inf"), i)

        return sorted(todo, key=uncertainty)

    def can_undo(self) -> bool:
        return self._last_open() is not None

    def _last_open(self) -> dict[str, Any] | None:
        undone = {e.get("undoes") for e in self._log if e.get("action") == "undo"}
        for entry in reversed(self._log):
            if entry.get("action") != "undo" and entry.get("id") not in undone:
                return entry
        return None

    # -------------------------------------------------------------------------------------------- write
    def apply(self, action: str, rows: list[int], label: str | None = None) -> dict[str, Any]:
        """Decide ``action`` for manifest ``rows``; writes the manifest and logs the change. Returns the entry.

        Raises:
            ValueError: unknown action, no rows, a row out of range, ``correct`` without a valid ``label``.
        """
        if action not in ACTIONS:
            raise ValueError(f"review action must be one of {ACTIONS}, got {action!r}")
        if not rows:
            raise ValueError("no images to review")
        bad = [r for r in rows if not 0 <= r < len(self.rows)]
        if bad:
            raise ValueError(f"manifest row {bad[0]} does not exist ({len(self.rows)} rows)")
        if action == "correct":
            if not isinstance(label, str) or not label.strip() or "|" in label or "\n" in label:
                raise ValueError(f"'correct' needs a class name (non-empty, no '|'), got {label!r}")
            label = label.strip()
        changes = []
        for r in dict.fromkeys(rows):
            before = {k: self.get(r, k) for k in _FIELDS}
            new = {
                "accept": before["label"] or self.get(r, "prediction"),
                "correct": label or "",
                "unknown": "",
            }[action]
            after = {"label": new, "review": _STATE[action]}
            changes.append({"row": r, "path": self.rows[r].path, "before": before, "after": after})
        entry = {"id": self._next_id(), "time": time.time(), "action": action, "rows": changes}
        self._commit(entry, "after")
        return entry

    def undo(self) -> dict[str, Any] | None:
        """Restore the rows of the latest change not undone yet; ``None`` when there is nothing to undo."""
        last = self._last_open()
        if last is None:
            return None
        entry = {"id": self._next_id(), "time": time.time(), "action": "undo", "undoes": last["id"],
                 "rows": last["rows"]}  # fmt: skip
        self._commit(entry, "before")
        return entry

    def _next_id(self) -> int:
        return 1 + max((int(e.get("id", 0)) for e in self._log), default=0)

    def _commit(self, entry: dict[str, Any], side: str) -> None:
        old = {c["row"]: {k: self.rows[c["row"]].data.get(k) for k in _FIELDS} for c in entry["rows"]}
        for change in entry["rows"]:
            self.rows[change["row"]].data.update(change[side])
        try:
            write_text_atomic(self.path, self._render())
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        except OSError:
            for r, values in old.items():  # the file on disk is unchanged: so is the state in memory
                self.rows[r].data.update(values)
            raise
        self._log.append(entry)

    def _render(self) -> str:
        out = io.StringIO()
        if self.kind == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(self.columns)
            for row in self.rows:
                writer.writerow([row.data.get(c, "") or "" for c in self.columns])
        else:
            for row in self.rows:
                data = dict(row.data)
                if data.get("label") == "":
                    data["label"] = None
                out.write(json.dumps(data, ensure_ascii=False) + "\n")
        return out.getvalue()

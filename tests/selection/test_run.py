"""select_backbones: the per-model feature cache (a second run with one more model embeds with that one only),
local weight files as candidates, the ranking, the data checks, and the ONNX speed cache."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frugalvision.data import open_dataset
from frugalvision.errors import DataError
from frugalvision.models import create_backbone
from frugalvision.selection import Candidate, labelled_subset, parse_candidates, select_backbones
from frugalvision.selection import run as run_mod
from helpers import make_labelled_folder

TINY = ("test_resnet", "test_efficientnet", "test_vit")  # timm's tiny test configs, random weights


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_labelled_folder(tmp_path / "data", classes=4, per_class=4, size=20)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, Counter[str]]:
    """Count the backbones select_backbones builds and the images each one embeds."""
    calls: dict[str, Counter[str]] = {"built": Counter(), "images": Counter()}

    def build(name: str, **kwargs: Any) -> Any:
        calls["built"][name] += 1
        backbone = create_backbone(name, **kwargs)
        backbone.register_forward_hook(lambda _m, args, _o: calls["images"].update({name: len(args[0])}))
        return backbone

    monkeypatch.setattr(run_mod, "create_backbone", build)
    return calls


def _run(folder: Path, cache: Path, models: str, **kwargs: Any) -> Any:
    cands = parse_candidates(models, pretrained=False)
    return select_backbones(
        open_dataset(folder), cands, cache, speed=False, num_workers=0, progress=False, **kwargs
    )


def test_second_run_with_one_more_model_embeds_only_that_one(
    folder: Path, tmp_path: Path, counted: dict[str, Counter[str]]
) -> None:
    first = _run(folder, tmp_path / "cache", "test_resnet,test_efficientnet")
    assert counted["built"] == Counter({"test_resnet": 1, "test_efficientnet": 1})
    assert counted["images"] == Counter({"test_resnet": 16, "test_efficientnet": 16})
    assert sorted(m.embedded for m in first.models) == [16, 16]

    counted["built"].clear()
    counted["images"].clear()
    second = _run(folder, tmp_path / "cache", ",".join(TINY))
    assert counted["built"] == Counter({"test_vit": 1})  # the cached two are not even built
    assert counted["images"] == Counter({"test_vit": 16})
    assert {m.model: m.embedded for m in second.models} == {
        "test_resnet": 0,
        "test_efficientnet": 0,
        "test_vit": 16,
    }
    # the cached models score exactly as before
    before = {m.model: m.scores for m in first.models}
    for m in second.models:
        if m.model in before:
            assert m.scores == before[m.model]
    assert len({m.key for m in second.models}) == 3


def test_ranking_order_and_result_fields(folder: Path, tmp_path: Path) -> None:
    result = _run(folder, tmp_path / "cache", ",".join(TINY), rank_by="map_at_r")
    values = [m.scores["map_at_r"] for m in result.models]
    assert values == sorted(values, reverse=True)
    assert result.images == 16 and result.classes == 4
    assert any(m.pareto for m in result.models)
    assert result.models[0].pareto  # the best score is always on the front
    d = result.to_dict()
    assert [m["rank"] for m in d["models"]] == [1, 2, 3]
    assert json.loads(json.dumps(d)) == d
    for m in result.models:
        built = create_backbone(m.backbone["name"], pretrained=False)
        assert m.parameters == sum(p.numel() for p in built.parameters())
        assert m.dim == built.num_features
    assert "test_vit" in result.table()
    with pytest.raises(ValueError, match="rank_by must be one of"):
        _run(folder, tmp_path / "cache", "test_vit", rank_by="accuracy")


def test_local_weights_file_is_a_candidate_and_its_content_keys_the_cache(
    folder: Path, tmp_path: Path, counted: dict[str, Counter[str]]
) -> None:
    import torch
    from safetensors.torch import save_file

    def save(seed: int) -> Path:
        torch.manual_seed(seed)
        model = create_backbone("test_resnet", pretrained=False).model
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        return path

    path = save(0)
    a = _run(folder, tmp_path / "cache", f"test_resnet={path}")
    assert a.models[0].model == "test_resnet=w.safetensors"
    assert a.models[0].backbone["weights"] == str(path)
    path = save(1)  # other weights under the same file name: not the cached features
    b = _run(folder, tmp_path / "cache", f"test_resnet={path}")
    assert counted["built"]["test_resnet"] == 2
    assert a.models[0].key != b.models[0].key
    assert a.models[0].scores["logme"] != b.models[0].scores["logme"]


def test_killed_embedding_resumes(
    folder: Path, tmp_path: Path, counted: dict[str, Counter[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed during embedding keeps its finished shards; the next run embeds only the rest and scores
    exactly as an uninterrupted run."""
    import functools

    from frugalvision.embeddings import extract as extract_mod

    monkeypatch.setattr(
        run_mod, "extract_embeddings", functools.partial(run_mod.extract_embeddings, shard_size=4)
    )
    real = extract_mod.embed_images
    batches = {"n": 0}

    def dying(*args: Any, **kwargs: Any) -> Any:
        batches["n"] += 1
        if batches["n"] == 3:
            raise KeyboardInterrupt  # the third batch of 4: two shards of 4 images are on disk
        return real(*args, **kwargs)

    monkeypatch.setattr(extract_mod, "embed_images", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(folder, tmp_path / "cache", "test_vit", batch_size=4)
    monkeypatch.setattr(extract_mod, "embed_images", real)
    counted["images"].clear()
    resumed = _run(folder, tmp_path / "cache", "test_vit", batch_size=4)
    assert counted["images"]["test_vit"] == 8  # 16 images, 8 already in shards
    fresh = _run(folder, tmp_path / "fresh", "test_vit", batch_size=4)
    assert resumed.models[0].scores == fresh.models[0].scores


def test_data_checks(tmp_path: Path) -> None:
    one_class = make_labelled_folder(tmp_path / "one", classes=1, per_class=3, size=16)
    with pytest.raises(DataError, match="1 class"):
        _run(one_class, tmp_path / "cache", "test_vit")
    single = make_labelled_folder(tmp_path / "single", classes=3, per_class=2, size=16)
    (single / "class02" / "img1.png").unlink()
    with pytest.raises(DataError, match=r"class\(es\) class02 have a single image"):
        _run(single, tmp_path / "cache", "test_vit")
    multi = tmp_path / "multi.jsonl"
    img = next((tmp_path / "one" / "class00").iterdir())
    multi.write_text(json.dumps({"path": str(img), "labels": ["a", "b"]}) + "\n")
    with pytest.raises(DataError, match="has 2 labels"):
        _run(multi, tmp_path / "cache", "test_vit")
    with pytest.raises(ValueError, match="unknown model 'not_a_net'"):
        _run(one_class, tmp_path / "cache", "not_a_net")
    assert not (tmp_path / "cache").exists()  # nothing was embedded for any of these


def test_per_class_draw_is_seeded_and_stratified(tmp_path: Path) -> None:
    ds = open_dataset(make_labelled_folder(tmp_path / "d", classes=3, per_class=6, size=16))
    sub, ids = labelled_subset(ds, per_class=4, seed=0)
    assert np.bincount(ids).tolist() == [4, 4, 4]
    again, _ = labelled_subset(ds, per_class=4, seed=0)
    other, _ = labelled_subset(ds, per_class=4, seed=1)
    assert again.paths == sub.paths != other.paths


def test_parse_candidates(tmp_path: Path) -> None:
    w = tmp_path / "w.pth"
    w.write_bytes(b"x")
    got = parse_candidates(f" resnet18 ,vit_small_patch16_224.augreg_in21k,resnet18={w}")
    assert got == [
        Candidate("resnet18"),
        Candidate("vit_small_patch16_224.augreg_in21k"),
        Candidate("resnet18", weights=str(w)),
    ]
    for bad, match in [
        ("", "at least one"),
        ("a,,b", "empty entry"),
        ("resnet18=", "ARCH=FILE"),
        ("a,a", "twice"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_candidates(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth does not exist"):
        parse_candidates("resnet18=missing.pth")


@pytest.mark.slow
def test_speed_is_measured_once_and_cached(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exports: list[str] = []
    real_export = run_mod.export_for_speed
    monkeypatch.setattr(
        run_mod, "export_for_speed", lambda b, out: exports.append(str(out)) or real_export(b, out)
    )
    cands = parse_candidates("test_efficientnet", pretrained=False)
    kw: dict[str, Any] = {"num_workers": 0, "progress": False, "speed_seconds": 0.2}
    first = select_backbones(open_dataset(folder), cands, tmp_path / "cache", **kw)
    speed = first.models[0].speed
    assert set(speed) == {"1", "32"} and all(v > 0 for v in speed.values())
    again = select_backbones(open_dataset(folder), cands, tmp_path / "cache", **kw)
    assert again.models[0].speed == speed and len(exports) == 1  # read back, not measured again
    other = select_backbones(open_dataset(folder), cands, tmp_path / "cache", threads=1, **kw)
    assert other.models[0].speed != speed and len(exports) == 1  # remeasured for 1 thread, export reused


def test_random_weights_are_seeded_and_cached_per_seed(
    folder: Path, tmp_path: Path, counted: dict[str, Counter[str]]
) -> None:
    a = _run(folder, tmp_path / "cache", "test_vit", seed=0)
    b = _run(folder, tmp_path / "other", "test_vit", seed=0)
    assert a.models[0].scores["logme"] == b.models[0].scores["logme"]  # the same random weights
    c = _run(folder, tmp_path / "cache", "test_vit", seed=1)
    assert counted["built"]["test_vit"] == 3 and c.models[0].key != a.models[0].key
    assert c.models[0].scores["logme"] != a.models[0].scores["logme"]

"""The classification side of ``frugalvision evaluate`` (``predict`` lives in :mod:`frugalvision.cli.tagging`)."""

from __future__ import annotations

from pathlib import Path

import click

from frugalvision.cli._evaluate import echo_json, evaluate_on


def evaluate_classification(
    bundle: Path, data: Path, *, as_json: bool, workers: int | None, progress: bool, top_k: int
) -> None:
    """``frugalvision evaluate BUNDLE --data DATA`` for a classification bundle: top-1 / top-k accuracy, balanced
    accuracy, macro-F1, ECE and NLL with and without the bundle's temperature, and a per-class table."""
    from frugalvision.classify import Classifier, evaluate_classifier

    classifier = Classifier(bundle)
    result = evaluate_on(
        evaluate_classifier, classifier, data, workers=workers, progress=progress, top_k=top_k
    )
    if as_json:
        echo_json(bundle, data, result)
        return
    m = result["metrics"]
    click.echo(f"{result['images']} images, {len(classifier.classes)} classes")
    tops = sorted((k for k in m if k.startswith("top")), key=lambda k: int(k[3:]))
    for name in [*tops, "balanced_accuracy", "macro_f1"]:
        click.echo(f"  {name:<18} {m[name]:.4f}")
    click.echo(f"  {'':<18} {'T=' + format(m['temperature'], '.3g'):>10} {'T=1':>8}")
    click.echo(f"  {'ECE':<18} {m['ece']:>10.4f} {m['ece_raw']:>8.4f}")
    click.echo(f"  {'NLL':<18} {m['nll']:>10.4f} {m['nll_raw']:>8.4f}")
    click.echo(f"\n  {'class':<24} {'P':>6} {'R':>6} {'F1':>6} {'n':>5}")
    for row in result["per_class"]:
        p, r, f = (float("nan") if row.get(k) is None else row[k] for k in ("precision", "recall", "f1"))
        click.echo(
            f"  {str(row.get('class'))[:24]:<24} {p:>6.3f} {r:>6.3f} {f:>6.3f} {row.get('support', 0):>5d}"
        )

"""Result files and tables: the Recall@N table and the test report every ``structvpr test`` writes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from structvpr.utils.io import write_text_atomic


def recall_table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table of Recall@N (in %) with one row per model."""
    ns = sorted({k for r in rows.values() for k in r if k.startswith("R@")}, key=lambda k: int(k[2:]))
    lines = ["| model | " + " | ".join(ns) + " | queries | excluded |", "|---" * (len(ns) + 3) + "|"]
    for name, r in rows.items():
        cells = [f"{100 * r[n]:.1f}" for n in ns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {int(r['num_queries'])} | {int(r['num_excluded'])} |")
    return "\n".join(lines)


def write_test_report(out: str | Path, model: str, result: dict[str, float], notes: Sequence[str] = ()) -> str:
    """Write ``test_results.json`` and ``test_results.md`` into ``out`` (atomically); return the table text.

    Args:
        out: The run's folder.
        model: The name of the model that actually ran (its class, and the protocol).
        result: Recall@N values with ``num_queries`` and ``num_excluded``.
        notes: How positives were decided (the protocol's notes).
    """
    out = Path(out)
    write_text_atomic(out / "test_results.json", json.dumps({"model": model, **result, "notes": list(notes)}, indent=2))
    # The table states the denominator; the notes say how positives were decided.
    text = "\n".join(
        [
            recall_table({model: result}),
            "",
            *[f"- {n}" for n in notes],
            "- queries without a positive are excluded from the denominator (column 'excluded')",
        ]
    )
    write_text_atomic(out / "test_results.md", text + "\n")
    return text

"""Tables of the weighting experiment (``distillation_experiment.py report``): intervals, paired differences,
the partition against the manifest's corruption flags, and per-group gains by condition."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

ROWS = ("teacher", "baseline", "uniform", "weighted", "rescaled", "crossfit")
PAIRS = (
    ("weighted", "uniform"),
    ("rescaled", "uniform"),
    ("crossfit", "uniform"),
    ("crossfit", "rescaled"),
    ("weighted", "rescaled"),
    ("uniform", "baseline"),
)
KEYS = ("R@1", "R@5", "R@10")
GROUPS = ("noisy", "teachable", "consistent")
CONDITIONS = ("day", "dusk", "night", "fog")


def interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean and the half-width of its t confidence interval."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": round(mean, 2), "ci95": round(half, 2), "n": n}


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Mean paired difference a - b with its interval, wins/losses/ties and the two-sided sign-test p."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    wins, losses = int((d > 1e-9).sum()), int((d < -1e-9).sum())
    p = float(stats.binomtest(wins, wins + losses).pvalue) if wins + losses else 1.0
    return {**interval(d), "wins": wins, "losses": losses, "ties": len(d) - wins - losses, "sign_p": round(p, 3)}


def training_queries(root: Path) -> dict[str, dict[str, Any]]:
    """File name -> ``corrupted``, ``corruption`` (kind or "clean") and ``condition`` of every
    training query, from a world's ``manifest.json`` (fog counts as its own condition)."""
    out = {}
    for m in json.loads((root / "manifest.json").read_text())["images"]:
        if m["split"] == "train" and m["role"] == "queries":
            c, kind = m["condition"], m.get("label_corruption")
            out[Path(m["path"]).name] = {
                "corrupted": kind is not None,
                "corruption": kind or "clean",
                "condition": "fog" if c.get("fog", 0) > 0 else c["illumination"],
            }
    return out


def _chosen_dir(world: Path, row: str, chosen: dict[str, Any]) -> Path:
    if row in ("teacher", "baseline"):
        return world / row
    s = chosen[row]
    return world / row / f"lam{s['distill_weight']:g}_tau{s['tau']}_alpha{s['alpha']:g}"


def load(work: Path) -> tuple[dict[str, Any], dict[float, dict[int, dict[str, Any]]]]:
    """``chosen.json`` and every finished result at the chosen settings: ``runs[noise][seed][row]``."""
    chosen = json.loads((work / "chosen.json").read_text())
    runs: dict[float, dict[int, dict[str, Any]]] = defaultdict(dict)
    for world in sorted(work.glob("noise*_seed*")):
        noise = float(world.name.split("_")[0][5:])
        seed = int(world.name.split("seed")[1])
        found = {}
        for row in ROWS:
            path = _chosen_dir(world, row, chosen["chosen"]) / "result.json"
            if path.exists():
                found[row] = json.loads(path.read_text())
        runs[noise][seed] = found
    return chosen, runs


def summarise(work: Path) -> dict[str, Any]:
    chosen, runs = load(work)
    out: dict[str, Any] = {"chosen": chosen, "noise": {}}
    seconds = 0.0
    for result in work.rglob("result.json"):
        seconds += float(json.loads(result.read_text()).get("seconds", 0.0))
    out["job_seconds"] = round(seconds, 1)
    for noise, seeds in sorted(runs.items()):
        table, diffs, partition, gains = {}, {}, {}, {}
        for row in ROWS:
            done = [s for s, r in seeds.items() if row in r]
            if done:
                table[row] = {k: interval([100 * seeds[s][row]["test"][k] for s in done]) for k in KEYS}
                table[row]["seeds"] = sorted(done)
                table[row]["R@1_per_seed"] = [round(100 * seeds[s][row]["test"]["R@1"], 2) for s in sorted(done)]
        for a, b in PAIRS:
            both = sorted(s for s, r in seeds.items() if a in r and b in r)
            if len(both) > 1:
                diffs[f"{a} - {b}"] = {
                    k: paired([100 * seeds[s][a]["test"][k] for s in both], [100 * seeds[s][b]["test"][k] for s in both])
                    for k in KEYS
                }
        for row in ("uniform", "weighted", "rescaled", "crossfit"):
            records = [seeds[s][row]["partition"] for s in seeds if row in seeds[s]]
            if records:
                partition[row] = partition_summary(records)
                partition[f"{row}_by_corruption"] = noisy_by_corruption(
                    [seeds[s][row] for s in seeds if row in seeds[s]], work, noise, [s for s in seeds if row in seeds[s]]
                )
                gains[row] = group_gains(
                    [(seeds[s]["baseline"], seeds[s][row]) for s in seeds if row in seeds[s]],
                    work,
                    noise,
                    [s for s in seeds if row in seeds[s]],
                )
        out["noise"][str(noise)] = {"test": table, "paired": diffs, "partition": partition, "group_gains": gains}
    return out


def partition_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per sub-epoch, over seeds: group sizes, the noisy group's precision and recall (means)."""
    epochs = []
    for e in range(min(len(r["epochs"]) for r in records)):
        rows = [r["epochs"][e] for r in records]

        def mean(key: str, rows: list[dict[str, Any]] = rows) -> float | None:
            values = [x[key] for x in rows if x[key] is not None]
            return round(float(np.mean(values)), 3) if values else None

        hit = sum(x["noisy_corrupted"] for x in rows)
        noisy, corrupted = sum(x["noisy_count"] for x in rows), sum(x["corrupted"] for x in rows)
        epochs.append(
            {
                "subepoch": e,
                **{f"{g}_count": mean(f"{g}_count") for g in GROUPS},
                "corrupted": mean("corrupted"),
                "teacher_rank1": mean("teacher_rank1"),
                "precision_pooled": round(hit / noisy, 3) if noisy else None,
                "recall_pooled": round(hit / corrupted, 3) if corrupted else None,
                "precision_mean": mean("precision"),
                "recall_mean": mean("recall"),
            }
        )
    return epochs


def noisy_by_corruption(results: list[dict[str, Any]], work: Path, noise: float, seeds: list[int]) -> dict[str, dict[str, Any]]:
    """Per corruption kind (and clean maps): training queries, and the share in the noisy group (pooled)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for result, seed in zip(results, seeds):
        facts = training_queries(work / f"noise{noise}_seed{seed}" / "world")
        for name, group in result["partition"]["first_groups"].items():
            counts[facts[name]["corruption"]][0] += 1
            counts[facts[name]["corruption"]][1] += int(group == 0)
    return {k: {"n": n, "noisy": round(100 * m / n, 1)} for k, (n, m) in sorted(counts.items())}


def group_gains(pairs: list[tuple[dict[str, Any], dict[str, Any]]], work: Path, noise: float, seeds: list[int]) -> dict[str, Any]:
    """Training-query R@1 of baseline and student per (first sub-epoch) group and condition, pooled over seeds."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])  # n, baseline hits, student hits
    for (baseline, student), seed in zip(pairs, seeds):
        facts = training_queries(work / f"noise{noise}_seed{seed}" / "world")
        for name, group in student["partition"]["first_groups"].items():
            for cond in (facts[name]["condition"], "all"):
                cell = counts[(GROUPS[group], cond)]
                cell[0] += 1
                cell[1] += int(baseline["train_ranks"][name] == 1)
                cell[2] += int(student["train_ranks"][name] == 1)
    out: dict[str, Any] = {}
    for (group, cond), (n, b, s) in sorted(counts.items()):
        out.setdefault(group, {})[cond] = {
            "n": n,
            "baseline": round(100 * b / n, 1),
            "student": round(100 * s / n, 1),
            "gain": round(100 * (s - b) / n, 1),
        }
    return out


def _opt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _fmt(x: dict[str, Any]) -> str:
    return f"{x['mean']:.1f} ± {x['ci95']:.1f}"


def markdown(summary: dict[str, Any]) -> str:
    lines = []
    chosen = summary["chosen"]
    width = max(len(curve) for factors in chosen["val_curves"].values() for curve in factors.values())
    lines += [
        f"### Settings chosen on val (noise {chosen['tune_noise']}, seeds {chosen['tune_seeds']})",
        "",
        "| variant | lambda | tau | alpha |",
        "|---|---|---|---|",
    ]
    for variant, s in chosen["chosen"].items():
        lines.append(f"| {variant} | {s['distill_weight']:g} | {s['tau']} | {s['alpha']:g} |")
    lines += [
        "",
        f"Val R@1 (mean over the tuning seeds) along each factor, the others at the centre {chosen['centre']}:",
        "",
        "| variant | factor | " + " | ".join(["value: val R@1"] * width) + " |",
        "|---|---|" + "---|" * width,
    ]
    for variant, factors in chosen["val_curves"].items():
        for factor, curve in factors.items():
            cells = [f"{v}: {c['mean']:.1f}" for v, c in curve.items()] + [""] * (width - len(curve))
            lines.append(f"| {variant} | {factor} | " + " | ".join(cells) + " |")
    for noise, block in summary["noise"].items():
        lines += [
            "",
            f"### Label noise {noise}: test split, mean ± 95% CI over seeds",
            "",
            "| model | seeds | R@1 | R@5 | R@10 |",
            "|---|---|---|---|---|",
        ]
        for row, vals in block["test"].items():
            lines.append(f"| {row} | {len(vals['seeds'])} | " + " | ".join(_fmt(vals[k]) for k in KEYS) + " |")
        lines += ["", "| paired difference | R@1 | wins/losses/ties | sign p | R@5 | R@10 |", "|---|---|---|---|---|---|"]
        for pair, vals in block["paired"].items():
            r1 = vals["R@1"]
            lines.append(
                f"| {pair} | {_fmt(r1)} | {r1['wins']}/{r1['losses']}/{r1['ties']} | {r1['sign_p']:.3f} | "
                f"{_fmt(vals['R@5'])} | {_fmt(vals['R@10'])} |"
            )
        kinds = {row[: -len("_by_corruption")]: v for row, v in block["partition"].items() if row.endswith("_by_corruption")}
        if kinds:
            names = sorted({k for v in kinds.values() for k in v})
            lines += [
                "",
                "Share of each kind of label map put in the noisy group (%, pooled over seeds; n training queries in brackets):",
                "",
                "| run | " + " | ".join(names) + " |",
                "|---|" + "---|" * len(names),
            ]
            for row, v in kinds.items():
                cells = [f"{v[k]['noisy']:.0f} ({v[k]['n']})" if k in v else "-" for k in names]
                lines.append(f"| {row} | " + " | ".join(cells) + " |")
        for row, epochs in block["partition"].items():
            if row.endswith("_by_corruption"):
                continue
            lines += [
                "",
                f"Partition of the `{row}` run per sub-epoch (means over seeds; precision and recall of the "
                "noisy group against the manifest's corrupted training queries, pooled over seeds):",
                "",
                "| sub-epoch | noisy | teachable | consistent | corrupted | r_T = 1 | precision | recall |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for e in epochs:
                lines.append(
                    f"| {e['subepoch']} | {e['noisy_count']} | {e['teachable_count']} | {e['consistent_count']} "
                    f"| {e['corrupted']} | {e['teacher_rank1']} | {_opt(e['precision_pooled'])} | "
                    f"{_opt(e['recall_pooled'])} |"
                )
        for row, gains in block["group_gains"].items():
            lines += [
                "",
                f"Training-query R@1 gain, baseline -> `{row}` student, by first-sub-epoch group and "
                "condition (pooled over seeds; n queries in brackets):",
                "",
                "| group | " + " | ".join([*CONDITIONS, "all"]) + " |",
                "|---|---|---|---|---|---|",
            ]
            for group in GROUPS:
                cells = []
                for cond in (*CONDITIONS, "all"):
                    c = gains.get(group, {}).get(cond)
                    cells.append(f"{c['gain']:+.1f} ({c['n']})" if c else "-")
                lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(work: Path, out: Path) -> dict[str, Any]:
    summary = summarise(work)
    wall = work / "wall_seconds.json"
    if wall.exists():
        summary["wall"] = json.loads(wall.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out.with_suffix(".json"))
    out.with_suffix(".md").write_text(markdown(summary))
    print(markdown(summary))
    return summary

"""Tables of the evidence experiment (``evidence.py report``): every row with intervals, paired
budget-matched differences with their minimum detectable difference, the run-to-run spread, the
val curves, and where the weighting puts the distillation mass."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from report_distillation import interval
from scipy import stats

ROWS = (
    "teacher",
    "baseline_short",
    "baseline_full",
    "lambda0",
    "uniform",
    "paper",
    "meanone",
    "meanone_image",
    "oracle",
    "random_teacher",
    "self_distill",
)
LABELS = {
    "teacher": "SegTeacher (label maps)",
    "baseline_short": "RGB baseline, best epoch before the students branch off",
    "baseline_full": "RGB baseline, full budget",
    "lambda0": "lambda 0 continuation (no teacher)",
    "uniform": "uniform distillation",
    "paper": "StructVPR weights, paper form (per query)",
    "meanone": "StructVPR weights, mean 1 (per query)",
    "meanone_image": "StructVPR weights, mean 1 (per image)",
    "oracle": "oracle weights (corrupted maps 0)",
    "random_teacher": "random-weight teacher",
    "self_distill": "RGB self-distillation (baseline as teacher)",
    "scratch": "uniform distillation from random weights, full budget",
}
#: (a, b, what the difference a - b measures)
PAIRS = (
    ("uniform", "lambda0", "distillation proper: the teacher over the same steps"),
    ("random_teacher", "lambda0", "a teacher that knows nothing"),
    ("self_distill", "lambda0", "distillation without label maps"),
    ("uniform", "self_distill", "what the label maps add over self-distillation"),
    ("uniform", "random_teacher", "a trained teacher over a random one"),
    ("lambda0", "baseline_full", "the restart (fresh optimiser) at equal steps"),
    ("uniform", "baseline_full", "distillation over the full-budget baseline"),
    ("paper", "uniform", "paper weights over uniform"),
    ("meanone", "uniform", "mean-1 weights per query over uniform"),
    ("meanone_image", "uniform", "mean-1 weights per image over uniform"),
    ("meanone_image", "meanone", "per image over per query"),
    ("oracle", "uniform", "perfect noise detection over uniform (bound on any weighting)"),
)
KEYS = ("R@1", "R@5", "R@10")


def minimum_detectable(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean paired difference a two-sided paired t-test at ``alpha`` detects with ``power``.

    ``(t_{1 - alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)`` (the usual approximation of the
    non-central t); ``nan`` below two pairs.
    """
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


def pairs_needed(sd: float, target: float, alpha: float = 0.05, power: float = 0.8, limit: int = 10_000) -> int:
    """Fewest pairs whose minimum detectable difference is at most ``target``."""
    for n in range(2, limit):
        if minimum_detectable(sd, n, alpha, power) <= target:
            return n
    return limit


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Mean paired difference a - b: interval, wins/losses/ties, sign-test and t-test p, and the MDD."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    wins, losses = int((d > 1e-9).sum()), int((d < -1e-9).sum())
    sign_p = float(stats.binomtest(wins, wins + losses).pvalue) if wins + losses else 1.0
    sd = float(d.std(ddof=1)) if len(d) > 1 else math.nan
    t_p = float(stats.ttest_1samp(d, 0.0).pvalue) if len(d) > 1 and sd > 0 else math.nan
    return {
        **interval(d),
        "sd": round(sd, 2),
        "wins": wins,
        "losses": losses,
        "ties": len(d) - wins - losses,
        "sign_p": round(sign_p, 4),
        "t_p": round(t_p, 4),
        "mdd": round(minimum_detectable(sd, len(d)), 2),
        "pairs_for_mdd_2": pairs_needed(sd, 2.0) if math.isfinite(sd) else None,
    }


def _chosen_result(world: Path, row: str, chosen: dict[str, Any], suffix: str = "") -> dict[str, Any] | None:
    s = chosen[row]
    path = world / f"{row}{suffix}" / f"lam{s['distill_weight']:g}_tau{s['tau']}_alpha{s['alpha']:g}" / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def world_rows(world: Path, chosen: dict[str, Any], suffix: str = "") -> dict[str, dict[str, Any]]:
    """Every finished row of a world: ``test`` (Recall@N in %), ``val`` (the selected epoch's), ``curve``."""
    out: dict[str, dict[str, Any]] = {}
    teacher = world / "teacher" / "result.json"
    if teacher.exists() and not suffix:
        t = json.loads(teacher.read_text())
        out["teacher"] = {"test": _percent(t["test"]), "curve": t["val_curve"]}
    base_dir = world / ("baseline" + (f"_train{suffix[6:]}" if suffix else ""))
    if (base_dir / "result.json").exists():
        b = json.loads((base_dir / "result.json").read_text())
        for name in ("baseline_short", "baseline_full"):
            out[name] = {
                "test": _percent(b[name]["test"]),
                "val": b[name]["val"],
                "epoch": b[name]["epoch"],
                "curve": b["val_curve"],
            }
    for row in chosen:
        r = _chosen_result(world, row, chosen, suffix)
        if r is not None:
            out[row] = {
                "test": _percent(r["test"]),
                "val": r["selected"]["val/R@1"],
                "curve": r["val_curve"],
                "targets": r["targets"],
                "partition": r.get("partition"),
                "seconds": r.get("seconds"),
            }
    return out


def _percent(recall: dict[str, float]) -> dict[str, float]:
    return {k: 100.0 * float(recall[k]) for k in KEYS}


def _mean_curve(curves: list[list[dict[str, float]]]) -> list[float]:
    length = min(len(c) for c in curves)
    return [round(float(np.mean([c[i]["val/R@1"] for c in curves])), 2) for i in range(length)]


def summarise(
    work: Path,
    final_seeds: Sequence[int],
    tune_seed: int,
    confirm_seed: int,
    spread_seeds: Sequence[int],
    base_epochs: int,
    cont_epochs: int,
    test_queries: int,
    preset: str = "powered",
) -> dict[str, Any]:
    chosen_file = json.loads((work / "chosen.json").read_text())
    chosen = chosen_file["chosen"]
    worlds = {s: world_rows(work / f"world{s}", chosen) for s in final_seeds}
    complete = [s for s in final_seeds if all(r in worlds[s] for r in ROWS)]
    out: dict[str, Any] = {
        "design": {
            "preset": preset,
            "label_noise": 0.3,
            "test_queries": test_queries,
            "val_queries": 500,
            "train_queries": 300,
            "base_epochs": base_epochs,
            "continuation_epochs": cont_epochs,
            "selection": f"best val R@1 among the last {cont_epochs} epochs of every RGB row",
            "final_seeds": list(final_seeds),
            "complete_worlds": complete,
            "tune_seed": tune_seed,
            "confirm_seed": confirm_seed,
            "spread_training_seeds": list(spread_seeds),
            "binomial_se_at_50pct": round(100 * math.sqrt(0.25 / test_queries), 2),
        },
        "chosen": chosen_file,
    }
    out["test"] = {row: {k: interval([worlds[s][row]["test"][k] for s in complete]) for k in KEYS} for row in ROWS}
    out["test_per_world"] = {row: {str(s): round(worlds[s][row]["test"]["R@1"], 2) for s in complete} for row in ROWS}
    out["paired_R@1"] = {
        f"{a} - {b}": {
            **paired([worlds[s][a]["test"]["R@1"] for s in complete], [worlds[s][b]["test"]["R@1"] for s in complete]),
            "what": what,
        }
        for a, b, what in PAIRS
    }
    # The run-to-run spread: the tuning world, its own training seed and the spread's others.
    spread_worlds = [world_rows(work / f"world{tune_seed}", chosen, "" if t == tune_seed else f"_train{t}") for t in spread_seeds]
    spread: dict[str, Any] = {}
    for row in ("baseline_full", "lambda0", "uniform"):
        values = [w[row]["test"]["R@1"] for w in spread_worlds if row in w]
        spread[row] = {
            "test_R@1": [round(v, 2) for v in values],
            "sd": round(float(np.std(values, ddof=1)), 2) if len(values) > 1 else None,
        }
    diffs = [
        w["uniform"]["test"]["R@1"] - w["lambda0"]["test"]["R@1"] for w in spread_worlds if "uniform" in w and "lambda0" in w
    ]
    spread["uniform - lambda0"] = {
        "values": [round(d, 2) for d in diffs],
        "sd": round(float(np.std(diffs, ddof=1)), 2) if len(diffs) > 1 else None,
    }
    out["spread_same_world"] = spread
    # Val curves: the mean over complete worlds, and the change over the last 3 epochs.
    curves = {}
    for row in ROWS:
        cs = [worlds[s][row]["curve"] for s in complete]
        if cs:
            mean = _mean_curve(cs)
            # The baseline's curve runs the whole budget: its short selection ends at base_epochs.
            tail = mean[-3:] if row != "baseline_short" else mean[max(base_epochs - 3, 0) : base_epochs]
            curves[row] = {"mean_val_R@1": mean, "last3_change": round(tail[-1] - tail[0], 2) if tail else None}
    out["val_curves"] = curves
    # The chosen settings on a world the grid never saw (val R@1 of the selected epoch).
    confirm = world_rows(work / f"world{confirm_seed}", chosen)
    out["confirm_val_R@1"] = {row: confirm[row]["val"] for row in chosen if row in confirm}
    # Where the distillation mass goes, and the noisy group against the manifest (first sub-epoch).
    targets, partitions = {}, {}
    for row in ("uniform", "paper", "meanone", "meanone_image", "oracle"):
        recs = [t for s in complete for t in worlds[s][row]["targets"]]
        targets[row] = {k: round(float(np.mean([t[k] for t in recs])), 4) for k in recs[0] if k != "subepoch"} if recs else {}
        parts = [worlds[s][row]["partition"] for s in complete if worlds[s][row].get("partition")]
        if parts:
            partitions[row] = {}
            for unit in ("query", "database"):
                tot = {k: sum(p[unit][k] for p in parts) for k in parts[0][unit]}
                tot["precision"] = round(tot["noisy_corrupted"] / tot["noisy"], 3) if tot["noisy"] else None
                tot["recall"] = round(tot["noisy_corrupted"] / tot["corrupted"], 3) if tot["corrupted"] else None
                partitions[row][unit] = tot
    out["targets"], out["partition"] = targets, partitions
    seconds = [w[r]["seconds"] for w in worlds.values() for r in w if w[r].get("seconds")]
    out["row_seconds_median"] = round(float(np.median(seconds)), 1) if seconds else None
    out["verdicts"] = verdicts(out)
    return out


def _significant(p: dict[str, Any]) -> bool:
    return p["n"] > 1 and math.isfinite(p["ci95"]) and abs(p["mean"]) > p["ci95"]


def verdicts(out: dict[str, Any]) -> dict[str, str]:
    """One sentence per claim, from the paired intervals (95%) and their minimum detectable differences."""
    pr = out["paired_R@1"]

    def say(key: str) -> str:
        p = pr[key]
        if p["n"] < 2:
            return f"{key}: not enough worlds"
        state = "significant" if _significant(p) else f"not detected (this design detects {p['mdd']:.1f} points)"
        return (
            f"{key} = {p['mean']:+.1f} +- {p['ci95']:.1f} R@1 over {p['n']} worlds "
            f"({p['wins']}/{p['losses']}/{p['ties']} wins/losses/ties): {state}"
        )

    teacher = [say("uniform - lambda0"), say("uniform - self_distill"), say("random_teacher - lambda0")]
    weighting = [say(k) for k in ("meanone - uniform", "meanone_image - uniform", "paper - uniform", "oracle - uniform")]
    return {"teacher_structure": "; ".join(teacher), "weighting": "; ".join(weighting)}


def markdown(out: dict[str, Any]) -> str:
    d = out["design"]
    lines = [
        "# Evidence: does the teacher's structure help? (benchmarks/evidence.py)",
        "",
        f"Worlds: {len(d['complete_worlds'])} complete of seeds {d['final_seeds']} (`{d['preset']}` preset, label "
        f"noise {d['label_noise']}, {d['train_queries']} training / {d['val_queries']} val / {d['test_queries']} test "
        f"queries; binomial SE of one R@1 near 50%: {d['binomial_se_at_50pct']} points). Every RGB row trains "
        f"{d['base_epochs'] + d['continuation_epochs']} epochs ({d['base_epochs']} of baseline, then "
        f"{d['continuation_epochs']}) and is selected as {d['selection']}.",
        "",
        "## Test split, mean +- 95% t interval over worlds",
        "",
        "| row | R@1 | R@5 | R@10 |",
        "|---|---|---|---|",
    ]
    for row in ROWS:
        t = out["test"][row]
        lines.append(f"| {LABELS[row]} | " + " | ".join(f"{t[k]['mean']:.1f} +- {t[k]['ci95']:.1f}" for k in KEYS) + " |")
    lines += [
        "",
        "## Paired test R@1 differences (budget-matched)",
        "",
        "| difference | what it measures | mean +- 95% CI | sd | wins/losses/ties | t p | MDD | pairs for MDD 2 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, p in out["paired_R@1"].items():
        lines.append(
            f"| {key} | {p['what']} | {p['mean']:+.1f} +- {p['ci95']:.1f} | {p['sd']} | "
            f"{p['wins']}/{p['losses']}/{p['ties']} | {p['t_p']} | {p['mdd']} | {p['pairs_for_mdd_2']} |"
        )
    lines += [
        "",
        "MDD: the smallest true mean difference a two-sided paired t-test (alpha 0.05) detects with power "
        "0.8 at this many worlds, from the observed sd of the differences.",
        "",
        "## Verdicts",
        "",
        f"- Teacher's structure: {out['verdicts']['teacher_structure']}.",
        f"- Weighting: {out['verdicts']['weighting']}.",
        "",
        "## Run-to-run spread (the tuning world, training seeds " + str(d["spread_training_seeds"]) + ")",
        "",
    ]
    for row, s in out["spread_same_world"].items():
        lines.append(f"- {row}: {s.get('test_R@1', s.get('values'))} (sd {s['sd']})")
    lines += ["", "## Val curves (mean val R@1 per epoch over complete worlds)", ""]
    for row, c in out["val_curves"].items():
        lines.append(f"- {row} (change over the last 3 epochs of its selection window {c['last3_change']}): {c['mean_val_R@1']}")
    lines += ["", "## Chosen settings (tuning world) and their val R@1 on the confirmation world", ""]
    for row, s in out["chosen"]["chosen"].items():
        lines.append(f"- {row}: {s}; confirmation val R@1 {out['confirm_val_R@1'].get(row)}")
    lines += ["", "Val grid on the tuning world (selected-epoch val R@1):", ""]
    for row, scores in out["chosen"]["val_R@1"].items():
        lines.append(f"- {row}: " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items()))
    lines += [
        "",
        "## Where the distillation mass goes (mean over sub-epochs and worlds)",
        "",
        "| row | corrupted share of targets | corrupted share of mass | query targets corrupted | "
        "corrupted database targets per tuple |",
        "|---|---|---|---|---|",
    ]
    for row, t in out["targets"].items():
        if t:
            lines.append(
                f"| {row} | {t['corrupted_share_of_targets']} | {t['corrupted_share_of_mass']} | "
                f"{t['query_targets_corrupted']} | {t['database_targets_corrupted_per_tuple']} |"
            )
    lines += [
        "",
        "## Noisy group against the manifest (first sub-epoch, pooled over worlds)",
        "",
        "| row | unit | images | corrupted | noisy | precision | recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, parts in out["partition"].items():
        for unit, p in parts.items():
            lines.append(
                f"| {row} | {unit} | {p['images']} | {p['corrupted']} | {p['noisy']} | {p['precision']} | {p['recall']} |"
            )
    return "\n".join(lines) + "\n"


def write_report(work: Path, out_prefix: Path, **design: Any) -> dict[str, Any]:
    out = summarise(work, **design)
    wall = work / "wall_seconds.json"
    if wall.exists():
        out["wall_seconds"] = json.loads(wall.read_text())["seconds"]
    return _write(out, out_prefix, markdown(out))


def _write(out: dict[str, Any], out_prefix: Path, text: str) -> dict[str, Any]:
    """``OUT.json`` and ``OUT.md`` (printed too)."""
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out_prefix}.json").write_text(json.dumps(out, indent=1))
    Path(f"{out_prefix}.md").write_text(text)
    print(text)
    return out


#: The extension's comparisons (every one budget-matched: each side trains BASE + CONT epochs).
EXTENSION_PAIRS = (
    ("uniform", "lambda0", "distillation proper: the teacher over the same steps"),
    ("uniform", "self_distill", "what the label maps add over self-distillation"),
    ("self_distill", "lambda0", "distillation without label maps"),
    ("uniform", "baseline_full", "distillation over the full-budget baseline"),
    ("scratch", "baseline_full", "distilled from the start over the full-budget baseline"),
    ("scratch", "uniform", "from the start over from the baseline (same epochs)"),
    ("meanone", "uniform", "StructVPR weights (mean 1, per query) over uniform"),
    ("meanone_image", "uniform", "StructVPR weights (mean 1, per image) over uniform"),
    ("oracle", "uniform", "a perfect noise detector over uniform"),
)
EXTENSION_ROWS = (
    "teacher",
    "baseline_full",
    "lambda0",
    "uniform",
    "self_distill",
    "scratch",
    "meanone",
    "meanone_image",
    "oracle",
)


def extension(work: Path, previous: Path | Sequence[Path] | None, base_epochs: int, cont_epochs: int) -> dict[str, Any]:
    """Pool the per-world test R@1 of earlier reports with the worlds finished under ``work``.

    Worlds are the directories ``work/world<seed>`` other than the tuning and confirmation worlds
    of ``chosen.json``; a world counts for a comparison when both of its rows finished there.
    ``previous`` is a first report (``evidence.py report``) or an earlier extension, or several:
    a row's R@1 on one world may come from more than one of them only if they agree.
    """
    chosen_file = json.loads((work / "chosen.json").read_text())
    chosen = dict(chosen_file["chosen"])
    chosen.setdefault("scratch", {**chosen["lambda0"], "distill_weight": chosen["uniform"]["distill_weight"]})
    skip = {f"world{chosen_file['tune_seed']}", f"world{chosen_file.get('confirm_seed', -1)}"}
    per_world: dict[str, dict[str, float]] = {row: {} for row in EXTENSION_ROWS}
    source: dict[str, str] = {}
    previous = [previous] if isinstance(previous, Path) else list(previous or ())
    wall: dict[str, Any] = {}
    for prev_path in previous:
        prev = json.loads(prev_path.read_text())
        seconds = prev.get("wall_seconds")
        if isinstance(seconds, dict):
            wall.update(seconds)
        elif seconds is not None:
            wall[f"{prev_path.name}, every row"] = seconds
        for row in EXTENSION_ROWS:
            for w, r1 in prev["test_per_world"].get(row, {}).items():
                if per_world[row].setdefault(w, r1) != r1:
                    raise SystemExit(f"{prev_path}: {row} on world {w} is {r1}, an earlier report says {per_world[row][w]}")
        worlds = prev["design"].get("complete_worlds", prev["design"].get("worlds"))  # a report, or an extension
        for w in worlds:
            source.setdefault(str(w), prev_path.name)  # names, not machine paths
    curves: dict[str, list[list[dict[str, float]]]] = {row: [] for row in EXTENSION_ROWS}
    for world in sorted(work.glob("world*")):
        if world.name in skip or not world.is_dir():
            continue
        seed = world.name[len("world") :]
        if seed in source:
            raise SystemExit(f"{world}: world {seed} is already in {source[seed]}")
        rows = world_rows(world, chosen)
        for row in EXTENSION_ROWS:
            if row in rows:
                per_world[row][seed] = round(rows[row]["test"]["R@1"], 2)
                curves[row].append(rows[row]["curve"])
        if rows:
            source[seed] = work.name
    worlds = dict(sorted(source.items(), key=lambda kv: int(kv[0])))
    out: dict[str, Any] = {
        "design": {"base_epochs": base_epochs, "continuation_epochs": cont_epochs, "worlds": worlds, "chosen": chosen}
    }
    out["test_per_world"] = per_world
    out["test"] = {row: {"R@1": interval(list(v.values()))} for row, v in per_world.items() if v}
    pairs = {}
    for a, b, what in EXTENSION_PAIRS:
        common = sorted(set(per_world[a]) & set(per_world[b]), key=int)
        if len(common) >= 2:
            pairs[f"{a} - {b}"] = {
                **paired([per_world[a][w] for w in common], [per_world[b][w] for w in common]),
                "worlds": [int(w) for w in common],
                "what": what,
            }
    out["paired_R@1"] = pairs
    if (work / "wall_seconds.json").exists():  # {"what": ..., "seconds": ...} of the worlds run under work
        this = json.loads((work / "wall_seconds.json").read_text())
        wall[this["what"]] = this["seconds"]
    if wall:
        out["wall_seconds"] = wall
    out["val_curves"] = {}
    for row, cs in curves.items():
        if cs:
            mean = _mean_curve(cs)
            out["val_curves"][row] = {
                "worlds": len(cs),
                "mean_val_R@1": mean,
                "last3_change": round(mean[-1] - mean[-3], 2) if len(mean) >= 3 else None,
            }
    return out


def extension_markdown(out: dict[str, Any]) -> str:
    lines = [
        "# Evidence, more worlds for the key rows (benchmarks/evidence.py extend)",
        "",
        "Worlds and where they ran: " + ", ".join(f"{w} ({s})" for w, s in out["design"]["worlds"].items()),
        "",
        "## Test R@1, mean +- 95% t interval over worlds",
        "",
        "| row | worlds | R@1 |",
        "|---|---|---|",
    ]
    for row, t in out["test"].items():
        lines.append(f"| {LABELS[row]} | {t['R@1']['n']} | {t['R@1']['mean']:.1f} +- {t['R@1']['ci95']:.1f} |")
    lines += [
        "",
        "## Paired test R@1 differences (budget-matched)",
        "",
        "| difference | what it measures | worlds | mean +- 95% CI | sd | wins/losses/ties | t p | MDD | pairs for MDD 2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, p in out["paired_R@1"].items():
        lines.append(
            f"| {key} | {p['what']} | {p['n']} | {p['mean']:+.1f} +- {p['ci95']:.1f} | {p['sd']} | "
            f"{p['wins']}/{p['losses']}/{p['ties']} | {p['t_p']} | {p['mdd']} | {p['pairs_for_mdd_2']} |"
        )
    lines += ["", "## Val curves of this run's worlds (mean val R@1 per epoch)", ""]
    for row, c in out["val_curves"].items():
        lines.append(f"- {row} ({c['worlds']} worlds; change over the last 3 epochs {c['last3_change']}): {c['mean_val_R@1']}")
    return "\n".join(lines) + "\n"


def write_extension(work: Path, out_prefix: Path, previous: Path | None = None, **design: Any) -> dict[str, Any]:
    out = extension(work, previous, **design)
    return _write(out, out_prefix, extension_markdown(out))

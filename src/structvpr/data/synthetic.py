"""A procedurally generated street world written in the VG ``@`` folder format.

The camera looks sideways at one side of a street. A place is identified by its structure
(building widths and heights, gaps, walls, trees, poles with signs, sidewalk width), while
each visit changes its appearance: illumination (day, dusk, night with lit windows), season,
fog and rain, sensor noise, camera jitter and occluding cars, pedestrians and buses.
Database and query visits come from different condition distributions, and every RGB image
has the label map (Cityscapes train ids) of what a segmenter would give for it: segmenters
fail more at night, in fog and under heavy occlusion, so label noise depends on the
condition, and includes severe failures (large wrong regions, another place's layout).

Layout written under ``root`` (see :mod:`structvpr.data.vg`)::

    images/{train,val,test}/{database,queries}/@east@north@17@T@@@<pano>@@@@@@@<note>@.png
    labels/{train,val,test}/{database,queries}/<same file name>   (uint8 Cityscapes train ids)
    manifest.json        seed, preset, counts and every image's condition and corruption
    contact_sheet.png    the same places seen by database and query visits, with label maps
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from structvpr.data.labels import colorize

# Cityscapes train ids used by the renderer.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY = range(11)
PERSON, CAR, TRUCK, BUS = 11, 13, 14, 15

SPLITS = ("train", "val", "test")
ROLES = ("database", "queries")


@dataclass(frozen=True)
class SplitSpec:
    """One stretch of street: its length and how it is sampled."""

    length_m: float
    db_step_m: float
    num_queries: int


@dataclass(frozen=True)
class WorldSpec:
    """Everything that defines a generated world besides the seed.

    Args:
        image_size: ``(H, W)`` of every image.
        splits: Street stretch per split.
        view_width_m: Metres of facade seen across the image width.
        label_noise: Mean fraction of images whose label map is corrupted (a segmenter's
            failure rate); the per-image rate is scaled by how hard its condition is.
        db_conditions: Probabilities of illumination ``day, dusk, night`` for database visits.
        query_conditions: The same for query visits.
        query_fog: Probability of fog on a query visit (database visits never have fog).
        query_rain: Probability of rain on a query visit.
        db_traffic: Mean number of vehicles and pedestrians in a database image.
        query_traffic: The same for query images.
        gps_noise_m: Std of the difference between recorded and true camera position.
    """

    image_size: tuple[int, int] = (64, 128)
    splits: dict[str, SplitSpec] = field(default_factory=dict)
    view_width_m: float = 32.0
    label_noise: float = 0.0
    db_conditions: tuple[float, float, float] = (0.85, 0.15, 0.0)
    query_conditions: tuple[float, float, float] = (0.3, 0.25, 0.45)
    query_fog: float = 0.3
    query_rain: float = 0.25
    db_traffic: float = 0.6
    query_traffic: float = 2.0
    gps_noise_m: float = 0.7


PRESETS: dict[str, WorldSpec] = {
    "tiny": WorldSpec(
        image_size=(32, 64),
        splits={
            "train": SplitSpec(120.0, 4.0, 24),
            "val": SplitSpec(80.0, 4.0, 12),
            "test": SplitSpec(80.0, 4.0, 12),
        },
    ),
    "demo": WorldSpec(
        image_size=(64, 128),
        splits={
            "train": SplitSpec(900.0, 3.0, 300),
            "val": SplitSpec(360.0, 3.0, 120),
            "test": SplitSpec(480.0, 3.0, 160),
        },
        label_noise=0.1,
    ),
}

# The evidence testbed (benchmarks/evidence.py): the demo's training street, with val and test streets
# long enough that a paired comparison resolves about 2 R@1 points (500 val and 2,000 test queries:
# one test query is 0.05 points; the binomial standard error near 50% is 1.1 points).
PRESETS["powered"] = replace(
    PRESETS["demo"],
    splits={
        "train": PRESETS["demo"].splits["train"],
        "val": SplitSpec(1500.0, 3.0, 500),
        "test": SplitSpec(6000.0, 3.0, 2000),
    },
)

# 4:3, the shape of Pittsburgh and MSLS photos (640x480), with a narrower view (24 m of facade):
# the same streets as tiny and demo, so tests exercise the paper's geometry.
PRESETS["tiny43"] = replace(PRESETS["tiny"], image_size=(48, 64), view_width_m=24.0)
PRESETS["demo43"] = replace(PRESETS["demo"], image_size=(96, 128), view_width_m=24.0)

# Each split is a different street, far from the others.
_SPLIT_ORIGIN = {"train": (585000.0, 4477000.0), "val": (587000.0, 4479000.0), "test": (589000.0, 4481000.0)}
_FACADE_PALETTE = np.array(
    [[176, 160, 140], [150, 90, 70], [200, 190, 170], [120, 120, 125], [190, 150, 110], [160, 170, 180]],
    dtype=np.float32,
)


@dataclass
class Street:
    """The structure of one stretch of street, in metres along the street."""

    b_start: np.ndarray  # building start x
    b_end: np.ndarray
    b_height: np.ndarray
    b_roof: np.ndarray  # pitched-roof extra height (0 for flat)
    b_colour: np.ndarray  # palette index
    b_win_dx: np.ndarray  # window spacing
    b_win_dz: np.ndarray
    gap_kind: np.ndarray  # per building: what stands in the gap after it (0 none, 1 wall, 2 fence, 3 hedge)
    gap_height: np.ndarray
    trees: np.ndarray  # (T, 4): x, canopy centre z, radius x, radius z
    poles: np.ndarray  # (P, 3): x, height, attachment (0 none, 1 sign, 2 traffic light)
    kerb_x: np.ndarray  # sidewalk segments: start x
    kerb_w: np.ndarray  # sidewalk depth in rows for each segment
    origin: tuple[float, float]
    heading: float


def _make_street(rng: np.random.Generator, length: float, origin: tuple[float, float]) -> Street:
    margin = 40.0
    x, starts, ends = -margin, [], []
    while x < length + margin:
        width = rng.uniform(6.0, 22.0)
        starts.append(x)
        ends.append(x + width)
        x += width + (rng.uniform(2.0, 9.0) if rng.random() < 0.45 else 0.0)
    n = len(starts)
    b_height = rng.uniform(4.0, 17.0, n)
    b_roof = np.where(rng.random(n) < 0.3, rng.uniform(1.0, 3.5, n), 0.0)
    n_trees = rng.poisson((length + 2 * margin) / 14.0)
    trees = np.stack(
        [
            rng.uniform(-margin, length + margin, n_trees),
            rng.uniform(4.0, 7.5, n_trees),
            rng.uniform(1.5, 3.5, n_trees),
            rng.uniform(1.5, 3.0, n_trees),
        ],
        axis=1,
    )
    n_poles = rng.poisson((length + 2 * margin) / 18.0)
    poles = np.stack(
        [
            rng.uniform(-margin, length + margin, n_poles),
            rng.uniform(5.0, 8.5, n_poles),
            rng.choice(3, n_poles, p=[0.5, 0.3, 0.2]).astype(float),
        ],
        axis=1,
    )
    kerb_x = np.arange(-margin, length + margin, 10.0) + rng.uniform(0, 10.0)
    return Street(
        b_start=np.array(starts),
        b_end=np.array(ends),
        b_height=b_height,
        b_roof=b_roof,
        b_colour=rng.integers(0, len(_FACADE_PALETTE), n),
        b_win_dx=rng.uniform(1.8, 3.2, n),
        b_win_dz=rng.uniform(2.6, 3.4, n),
        gap_kind=rng.choice(4, n, p=[0.25, 0.3, 0.25, 0.2]),
        gap_height=rng.uniform(1.2, 3.0, n),
        trees=trees,
        poles=poles,
        kerb_x=kerb_x,
        kerb_w=rng.integers(2, 6, len(kerb_x)),
        origin=origin,
        heading=rng.uniform(0, np.pi),
    )


@dataclass
class Condition:
    """How one visit looks."""

    illumination: str  # day | dusk | night
    season: str  # summer | autumn | winter | spring
    fog: float  # 0 (none) .. 1
    rain: bool
    traffic: int  # number of dynamic objects drawn
    jitter_m: float  # true camera x minus recorded x

    def note(self) -> str:
        parts = [self.illumination, self.season]
        if self.fog > 0:
            parts.append("fog")
        if self.rain:
            parts.append("rain")
        return "_".join(parts)


def _draw_condition(rng: np.random.Generator, spec: WorldSpec, role: str) -> Condition:
    query = role == "queries"
    probs = spec.query_conditions if query else spec.db_conditions
    illumination = str(rng.choice(["day", "dusk", "night"], p=np.array(probs) / sum(probs)))
    seasons = ["summer", "autumn", "winter", "spring"]
    season = str(rng.choice(seasons, p=[0.2, 0.3, 0.35, 0.15] if query else [0.7, 0.1, 0.0, 0.2]))
    fog = float(rng.uniform(0.35, 0.75)) if query and rng.random() < spec.query_fog else 0.0
    rain = bool(query and rng.random() < spec.query_rain)
    traffic = int(rng.poisson(spec.query_traffic if query else spec.db_traffic))
    return Condition(illumination, season, fog, rain, traffic, float(rng.normal(0, spec.gps_noise_m)))


class _Canvas:
    """Paints the label map (ids) and RGB of one view together."""

    def __init__(self, h: int, w: int, x0: float, m_per_px: float, base_row: float, z_per_px: float):
        self.h, self.w = h, w
        self.col_x = x0 + (np.arange(w) + 0.5) * m_per_px  # world x of each column
        self.row_z = (base_row - np.arange(h) - 0.5) * z_per_px  # elevation of each row
        self.m_per_px, self.z_per_px, self.base_row = m_per_px, z_per_px, base_row
        self.label = np.full((h, w), SKY, dtype=np.uint8)
        self.rgb = np.zeros((h, w, 3), dtype=np.float32)
        self.depth = np.full((h, w), 60.0, dtype=np.float32)  # metres from camera, for fog

    def paint(self, mask: np.ndarray, cls: int, colour: Any, depth: float) -> None:
        self.label[mask] = cls
        self.rgb[mask] = colour
        self.depth[mask] = depth


def _render(
    street: Street, x_cam: float, cond: Condition, spec: WorldSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    h, w = spec.image_size
    m_per_px = spec.view_width_m / w
    base_row = 0.74 * h + rng.normal(0, 0.03 * h)
    z_per_px = 18.5 / base_row
    x0 = x_cam + cond.jitter_m - spec.view_width_m / 2
    cv = _Canvas(h, w, x0, m_per_px, base_row, z_per_px)
    cx, rz = cv.col_x, cv.row_z
    night, dusk = cond.illumination == "night", cond.illumination == "dusk"
    light = {"day": 1.0, "dusk": 0.55, "night": 0.12}[cond.illumination]

    # Sky: gradient by illumination.
    t = (np.arange(h) / h)[:, None, None]
    # At night the sky keeps a faint city glow, so buildings stand out as dark silhouettes.
    sky_top = {"day": (90, 140, 215), "dusk": (70, 60, 120), "night": (22, 26, 50)}[cond.illumination]
    sky_bot = {"day": (170, 200, 235), "dusk": (235, 140, 80), "night": (50, 48, 70)}[cond.illumination]
    cv.rgb[:] = np.array(sky_top) * (1 - t) + np.array(sky_bot) * t

    # Buildings and what fills the gaps between them.
    idx = np.searchsorted(street.b_start, cx, side="right") - 1
    inside = (idx >= 0) & (cx < street.b_end[np.clip(idx, 0, None)])
    bi = np.clip(idx, 0, None)
    rel = (cx - street.b_start[bi]) / (street.b_end[bi] - street.b_start[bi])
    roof = street.b_roof[bi] * (1 - np.abs(2 * rel - 1))
    top = np.where(inside, street.b_height[bi] + roof, 0.0)
    bmask = (rz[:, None] < top[None, :]) & (rz[:, None] >= 0)
    facade = _FACADE_PALETTE[street.b_colour[bi]] * light
    facade = facade * (0.92 + 0.08 * np.sin(cx * 3.1)[:, None])  # brick-ish texture
    cv.paint(bmask, BUILDING, np.broadcast_to(facade[None], (h, w, 3))[bmask], 12.0)
    # Windows: glass by day, randomly lit at night (the lit pattern changes every visit).
    wx = (cx - street.b_start[bi]) / street.b_win_dx[bi]
    wz = rz[:, None] / street.b_win_dz[bi][None, :]
    win = bmask & (np.abs(wx - np.round(wx))[None, :] < 0.22) & (np.abs(wz - np.round(wz) - 0.1) < 0.2)
    win &= (rz[:, None] > 1.5) & (rz[:, None] < top[None, :] - 1.0)
    if night:
        cell = (np.round(wx)[None, :] * 31 + np.round(wz) * 17 + bi[None, :] * 7).astype(np.int64)
        lit = rng.random(4096)[cell % 4096] < 0.35
        cv.rgb[win & lit] = (250, 215, 120)
        cv.rgb[win & ~lit] = (10, 10, 15)
    else:
        cv.rgb[win] = np.array((60, 80, 110)) * light + (30 if dusk else 0)
    gap = ~inside
    prev = np.clip(np.searchsorted(street.b_end, cx, side="right") - 1, 0, len(street.b_end) - 1)
    kind, gh = street.gap_kind[prev], street.gap_height[prev]
    gmask = gap[None, :] & (rz[:, None] >= 0) & (rz[:, None] < gh[None, :])
    for k, cls, colour in ((1, WALL, (140, 130, 125)), (2, FENCE, (110, 95, 80)), (3, VEG, (50, 110, 45))):
        m = gmask & (kind == k)[None, :]
        if k == 2:  # fences are see-through slats
            m &= (np.floor(cx / 0.5) % 2 == 0)[None, :] | (np.abs(rz[:, None] - gh[None, :] + 0.2) < 0.25)
        cv.paint(m, cls, np.array(colour) * light, 11.0)

    # Ground: sidewalk band of varying depth, road below.
    seg = np.clip(np.searchsorted(street.kerb_x, cx, side="right") - 1, 0, len(street.kerb_x) - 1)
    kerb_rows = street.kerb_w[seg]
    r = np.arange(h)[:, None]
    br = int(round(base_row))
    ground = r >= br
    side = ground & (r < br + kerb_rows[None, :])
    cv.paint(ground & ~side, ROAD, np.array((85, 85, 90)) * light * (0.7 if cond.rain else 1.0), 5.0)
    cv.paint(side, SIDEWALK, np.array((150, 140, 135)) * light, 8.0)

    # Trees (in front of buildings); canopy colour and density follow the season.
    leaf = {"summer": (45, 120, 40), "spring": (110, 170, 70), "autumn": (190, 110, 40), "winter": (90, 75, 60)}
    density = {"summer": 1.0, "spring": 0.85, "autumn": 0.7, "winter": 0.25}[cond.season]
    for tx, tz, rxx, rzz in street.trees[np.abs(street.trees[:, 0] - x_cam) < spec.view_width_m]:
        canopy = ((cx[None, :] - tx) / rxx) ** 2 + ((rz[:, None] - tz) / rzz) ** 2 < 1.0
        trunk = (np.abs(cx[None, :] - tx) < 0.25) & (rz[:, None] >= 0) & (rz[:, None] < tz)
        # A segmenter labels the whole crown as vegetation even when it is bare.
        cv.label[canopy | trunk] = VEG
        cv.depth[canopy | trunk] = 9.0
        leaves = canopy & (rng.random((h, w)) < density)
        cv.rgb[leaves] = np.array(leaf[cond.season]) * light * rng.uniform(0.8, 1.1)
        cv.rgb[trunk | (canopy & ~leaves & (rng.random((h, w)) < 0.3))] = np.array((70, 50, 35)) * light

    # Poles, with a sign or a traffic light on some.
    for px_, ph, att in street.poles[np.abs(street.poles[:, 0] - x_cam) < spec.view_width_m]:
        pole = (np.abs(cx[None, :] - px_) < max(0.15, m_per_px / 2)) & (rz[:, None] >= -0.5) & (rz[:, None] < ph)
        cv.paint(pole, POLE, np.array((60, 60, 65)) * max(light, 0.3), 7.0)
        if att:
            box = (np.abs(cx[None, :] - px_ - 0.6) < 0.6) & (np.abs(rz[:, None] - ph + 0.6) < 0.6)
            colour = (200, 200, 40) if att == 1 else (40, 40, 40)
            cv.paint(box, SIGN if att == 1 else LIGHT, np.array(colour) * max(light, 0.35), 7.0)
        if night:  # street lamp glow
            glow = ((cx[None, :] - px_) ** 2 + (rz[:, None] - ph) ** 2) < 1.2
            cv.rgb[glow] = (255, 230, 170)

    # Dynamic objects: cars, buses and pedestrians, different every visit.
    for _ in range(cond.traffic):
        ox = x0 + rng.uniform(0, spec.view_width_m)
        kind = rng.choice([CAR, BUS, PERSON], p=[0.6, 0.15, 0.25])
        wd, ht, z0 = {CAR: (4.2, 1.6, -1.2), BUS: (11.0, 3.4, -1.2), PERSON: (0.6, 1.8, -0.4)}[kind]
        body = (np.abs(cx[None, :] - ox) < wd / 2) & (rz[:, None] >= z0) & (rz[:, None] < z0 + ht)
        body_colour = rng.uniform(30, 230, 3) * max(light, 0.25)
        cv.paint(body, int(kind), body_colour, 4.0)
        if night and kind != PERSON:
            lamp = body & (rz[:, None] < z0 + 0.8) & (np.abs(np.abs(cx[None, :] - ox) - wd / 2 + 0.4) < 0.3)
            cv.rgb[lamp] = (255, 250, 220)

    rgb: np.ndarray = cv.rgb
    if cond.fog > 0:
        a = (1 - np.exp(-cv.depth / 10.0 * cond.fog * 3))[..., None]
        rgb = rgb * (1 - a) + np.array((150, 150, 155)) * light * a
    if cond.rain:
        streak = rng.random((h, w)) < 0.03
        streak |= np.roll(streak, 1, axis=0) | np.roll(streak, 2, axis=0)
        rgb = np.where(streak[..., None], rgb * 0.6 + 70, rgb)
    noise = {"day": 4.0, "dusk": 8.0, "night": 14.0}[cond.illumination]
    rgb = rgb * rng.uniform(0.85, 1.15, 3) + rng.normal(0, noise, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), cv.label


def _failure_rate(cond: Condition, spec: WorldSpec) -> float:
    """Per-image probability that the segmenter fails, scaled by how hard the condition is."""
    factor = {"day": 0.5, "dusk": 1.0, "night": 2.2}[cond.illumination]
    factor *= 1.6 if cond.fog > 0 else 1.0
    factor *= 1.3 if cond.traffic >= 3 else 1.0
    return min(1.0, spec.label_noise * factor)


def _corrupt(label: np.ndarray, kind: str, rng: np.random.Generator, other: np.ndarray) -> np.ndarray:
    """Imitate a segmenter failure of the given kind."""
    h, w = label.shape
    out = label.copy()
    yy, xx = np.mgrid[:h, :w]
    if kind == "blobs":
        for _ in range(rng.integers(2, 6)):
            cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, h / 4), rng.uniform(3, w / 6)
            out[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.choice([ROAD, BUILDING, VEG, SKY, TERRAIN])
    elif kind == "boundary":
        shift = int(rng.choice([-1, 1]) * rng.integers(2, max(3, h // 6)))
        out = np.roll(out, shift, axis=0)
        if shift > 0:
            out[:shift] = SKY
        else:
            out[shift:] = ROAD
        out[POLE == out] = BUILDING  # thin objects missed at the same time
    elif kind == "thin":
        out[np.isin(out, (POLE, SIGN, LIGHT))] = BUILDING
        out[(out == FENCE) | (out == WALL)] = VEG
    elif kind == "region":
        x0 = int(rng.integers(0, w // 2))
        y0 = int(rng.integers(0, h // 3))
        out[y0 : y0 + h // 2 + 4, x0 : x0 + int(w * rng.uniform(0.35, 0.6))] = rng.choice([BUILDING, SKY, VEG])
    elif kind == "swap":
        out = other.copy()
    return out


_CORRUPTIONS = ("blobs", "boundary", "thin", "region", "swap")
_CORRUPTION_P = (0.3, 0.2, 0.15, 0.15, 0.2)


def _route_position(street: Street, x: float) -> tuple[float, float]:
    """UTM (east, north) of the point ``x`` metres along the street."""
    e0, n0 = street.origin
    return e0 + x * np.cos(street.heading), n0 + x * np.sin(street.heading)


def vg_name(east: float, north: float, pano: str, note: str, ext: str = ".png") -> str:
    """File name in the VG ``@`` grammar (UTM zone 17T; lat/lon and angles left empty)."""
    return f"@{east:010.2f}@{north:010.2f}@17@T@@@{pano}@@@@@@@{note}@{ext}"


def generate(
    root: str | Path,
    preset: str = "demo",
    seed: int = 0,
    label_noise: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate a world under ``root`` and return its manifest.

    Writes into a temporary sibling folder and renames it into place at the end, so an
    interrupted run leaves nothing half-written at ``root``.

    Args:
        root: Destination folder; must not exist unless ``overwrite``.
        preset: Name in :data:`PRESETS` (``tiny`` for tests, ``demo`` for the pipeline).
        seed: Same seed and preset give byte-identical files.
        label_noise: Overrides the preset's label-noise fraction.
        overwrite: Replace an existing ``root``.
        progress: Print a line per split.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    spec = PRESETS[preset]
    if label_noise is not None:
        if not 0.0 <= label_noise <= 1.0:
            raise ValueError(f"label_noise must lie in [0, 1], got {label_noise}")
        spec = replace(spec, label_noise=label_noise)
    root = Path(root)
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} exists; pass overwrite=True (--overwrite) to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    start = time.perf_counter()
    try:
        manifest = _write_world(tmp, spec, preset, seed, progress)
        _contact_sheet(tmp, manifest).save(tmp / "contact_sheet.png")
        with open(tmp / "manifest.json", "w") as f:
            json.dump(manifest, f, indent=1)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(f"wrote {manifest['counts']['total']} images to {root} in {time.perf_counter() - start:.1f}s")
    return manifest


def _write_world(out: Path, spec: WorldSpec, preset: str, seed: int, progress: bool) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    counts: dict[str, Any] = {}
    for split_i, split in enumerate(SPLITS):
        sspec = spec.splits[split]
        street = _make_street(np.random.default_rng([seed, split_i, 0]), sspec.length_m, _SPLIT_ORIGIN[split])
        db_x = np.arange(0.0, sspec.length_m, sspec.db_step_m)
        q_x = np.sort(np.random.default_rng([seed, split_i, 1]).uniform(0, sspec.length_m, sspec.num_queries))
        counts[split] = {"database": len(db_x), "queries": len(q_x)}
        for role_i, (role, xs) in enumerate(zip(ROLES, (db_x, q_x))):
            (out / "images" / split / role).mkdir(parents=True)
            (out / "labels" / split / role).mkdir(parents=True)
            for i, x in enumerate(xs):
                rng = np.random.default_rng([seed, split_i, 2 + role_i, i])
                cond = _draw_condition(rng, spec, role)
                rgb, label = _render(street, float(x), cond, spec, rng)
                corruption = None
                if rng.random() < _failure_rate(cond, spec):
                    corruption = str(rng.choice(_CORRUPTIONS, p=_CORRUPTION_P))
                    other_x = (x + rng.uniform(60, 200) * rng.choice([-1, 1])) % sspec.length_m
                    other = _render(street, float(other_x), cond, spec, rng)[1] if corruption == "swap" else label
                    label = _corrupt(label, corruption, rng, other)
                east, north = _route_position(street, float(x))
                name = vg_name(east, north, f"{split}{role[0]}{i:05d}", cond.note())
                Image.fromarray(rgb).save(out / "images" / split / role / name)
                Image.fromarray(label).save(out / "labels" / split / role / name)
                images.append(
                    {
                        "path": f"images/{split}/{role}/{name}",
                        "split": split,
                        "role": role,
                        "route_x": round(float(x), 3),
                        "condition": asdict(cond),
                        "label_corruption": corruption,
                    }
                )
        if progress:
            print(f"  {split}: {counts[split]['database']} database, {counts[split]['queries']} queries")
    counts["total"] = len(images)
    return {
        "format": "structvpr-synthetic/1",
        "seed": seed,
        "preset": preset,
        "spec": {**asdict(spec), "splits": {k: asdict(v) for k, v in spec.splits.items()}},
        "counts": counts,
        "images": images,
    }


def _contact_sheet(root: Path, manifest: dict[str, Any], places: int = 6) -> Image.Image:
    """Rows: database RGB, query RGB, database label map, query label map; one column a place."""
    test = [m for m in manifest["images"] if m["split"] == "test"]
    db = [m for m in test if m["role"] == "database"]
    qs = [m for m in test if m["role"] == "queries"]
    picks = [qs[int(i)] for i in np.linspace(0, len(qs) - 1, places)]
    cols = []
    for q in picks:
        d = min(db, key=lambda m: abs(m["route_x"] - q["route_x"]))
        tiles = []
        for m, kind in ((d, "images"), (q, "images"), (d, "labels"), (q, "labels")):
            arr = np.array(Image.open(root / m["path"].replace("images/", f"{kind}/", 1)))
            tiles.append(colorize(arr) if kind == "labels" else arr)
        cols.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles]))
    return Image.fromarray(np.concatenate(cols, axis=1))


def summary(manifest: dict[str, Any]) -> str:
    """A few lines describing a generated world: counts, conditions and label corruptions."""
    lines = [
        f"synthetic world: preset {manifest['preset']}, seed {manifest['seed']}, "
        f"label noise {manifest['spec']['label_noise']}, {manifest['counts']['total']} images"
    ]
    for split in SPLITS:
        for role in ROLES:
            items = [m for m in manifest["images"] if m["split"] == split and m["role"] == role]
            light = {k: sum(m["condition"]["illumination"] == k for m in items) for k in ("day", "dusk", "night")}
            fog = sum(m["condition"]["fog"] > 0 for m in items)
            bad = sum(m["label_corruption"] is not None for m in items)
            lines.append(
                f"  {split:5s} {role:8s} {len(items):5d} images  day/dusk/night "
                f"{light['day']}/{light['dusk']}/{light['night']}  fog {fog}  corrupted labels {bad}"
            )
    return "\n".join(lines)

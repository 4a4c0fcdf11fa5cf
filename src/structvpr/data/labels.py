"""Label-map taxonomies, structural class groups and the one-hot teacher encoding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from structvpr.errors import LabelMapError

#: The 19 Cityscapes train ids, in id order. 255 marks ignored pixels.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
IGNORE_ID = 255

#: Default grouping of Cityscapes train ids into structural groups (DESIGN 1.1).
CITYSCAPES_GROUPS: dict[str, tuple[str, ...]] = {
    "flat": ("road", "sidewalk"),
    "construction": ("building", "wall", "fence"),
    "object": ("pole", "traffic light", "traffic sign"),
    "nature": ("vegetation", "terrain"),
    "sky": ("sky",),
    "dynamic": ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
}


@dataclass(frozen=True)
class ClassGrouping:
    """Maps the ids of a source taxonomy to G structural groups.

    Args:
        classes: Source class names in id order (id ``i`` is ``classes[i]``).
        groups: Group name to the source class names it holds, in channel order.
        zero_groups: Groups encoded as all-zero channels-off (not place structure).
        ignore_id: Source id of ignored pixels, encoded as all-zero.

    The one-hot encoding has one channel per group not in ``zero_groups``.
    """

    classes: tuple[str, ...] = CITYSCAPES_CLASSES
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(CITYSCAPES_GROUPS))
    zero_groups: tuple[str, ...] = ("dynamic",)
    ignore_id: int = IGNORE_ID

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for group, names in self.groups.items():
            for name in names:
                if name not in self.classes:
                    raise ValueError(f"group {group!r} names unknown class {name!r}")
                if name in seen:
                    raise ValueError(f"class {name!r} is in groups {seen[name]!r} and {group!r}")
                seen[name] = group
        for group in self.zero_groups:
            if group not in self.groups:
                raise ValueError(f"zero_groups names unknown group {group!r}")
        if len(self.classes) > 255:
            raise ValueError("at most 255 source classes fit a uint8 label map")

    @property
    def channel_groups(self) -> tuple[str, ...]:
        """Names of the groups that get a channel, in channel order."""
        return tuple(g for g in self.groups if g not in self.zero_groups)

    @property
    def num_channels(self) -> int:
        """G, the number of one-hot channels."""
        return len(self.channel_groups)

    def lookup_table(self) -> torch.Tensor:
        """(256,) int64 table from source id to channel, -1 for all-zero, -2 for invalid."""
        cached = self.__dict__.get("_table")
        if cached is not None:
            return cached
        table = torch.full((256,), -2, dtype=torch.long)
        channel_of = {g: c for c, g in enumerate(self.channel_groups)}
        table[: len(self.classes)] = -1
        for group, names in self.groups.items():
            for name in names:
                table[self.classes.index(name)] = channel_of.get(group, -1)
        table[self.ignore_id] = -1
        object.__setattr__(self, "_table", table)  # frozen dataclass: cache by hand
        return table

    def validate(self, label: np.ndarray | torch.Tensor, source: str | Path = "<array>") -> None:
        """Raise :class:`LabelMapError` naming ``source`` if ``label`` holds an unknown id."""
        values = torch.as_tensor(np.asarray(label)).unique()
        bad = values[(values >= len(self.classes)) & (values != self.ignore_id)]
        if bad.numel():
            raise LabelMapError(
                f"{source}: label ids {bad.tolist()[:10]} are outside the taxonomy "
                f"(0..{len(self.classes) - 1} and ignore {self.ignore_id})"
            )

    def one_hot(self, label: torch.Tensor) -> torch.Tensor:
        """Encode label maps as float one-hot group channels.

        Args:
            label: ``(H, W)`` or ``(B, H, W)`` integer ids of the source taxonomy.

        Returns:
            ``(G, H, W)`` or ``(B, G, H, W)`` float32, zeros for ignored and zero groups.
        """
        channel = self.lookup_table()[label.long()]
        if (channel == -2).any():
            raise LabelMapError(f"label ids outside the taxonomy: {label[channel == -2].unique().tolist()}")
        onehot = torch.nn.functional.one_hot(channel.clamp(min=-1) + 1, self.num_channels + 1)
        onehot = onehot[..., 1:].to(torch.float32)
        return onehot.movedim(-1, -3)


def cityscapes_grouping() -> ClassGrouping:
    """The default grouping of DESIGN 1.1: 19 Cityscapes train ids into 6 groups, dynamic off."""
    return ClassGrouping()


def load_label_map(path: str | Path, grouping: ClassGrouping | None = None) -> np.ndarray:
    """Read a single-channel uint8 label map, naming the file in every error.

    Args:
        path: PNG file of ids.
        grouping: When given, ids are checked against its taxonomy.

    Returns:
        ``(H, W)`` uint8 array.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelMapError(f"{path}: label map is missing")
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise LabelMapError(f"{path}: label map must be single-channel uint8, got mode {img.mode}")
            label = np.array(img, dtype=np.uint8)
    except LabelMapError:
        raise
    except Exception as err:  # PIL raises many types for a damaged file
        raise LabelMapError(f"{path}: cannot read label map ({err})") from err
    if grouping is not None:
        grouping.validate(label, path)
    return label


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) Cityscapes ids to an (H, W, 3) uint8 picture using the Cityscapes palette."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
    return palette[label]


CITYSCAPES_PALETTE: Sequence[tuple[int, int, int]] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)

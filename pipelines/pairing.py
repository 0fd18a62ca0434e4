"""Which files of a dataset are an image's side inputs: the dataset's convention, apart from the storage that lists
the files (`storage.iter_listing` asks it about each folder). Keys only: nothing is read here.

- A mask: ``<stem>_mask.<ext>`` beside ``<stem>.<ext>``; else, from a mask folder (``--mask-dir``), the file at the
  image's relative folder named ``<stem>.<ext>`` or ``<stem>_mask.<ext>``, or one of those at the folder's top.
- A guide: ``<stem><guide_suffix>.<ext>`` beside ``<stem>.<ext>``.
- Where several files fit (``a_mask.png``, ``a_mask.jpg``): the PNG, else the first by name. A file named as a mask
  or a guide is never an image of its own, even when no image claims it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TypeVar

MASK_SUFFIX = "_mask"
"""``<stem>_mask.<ext>`` beside an image is its inpainting mask; such files are never images of their own."""

V = TypeVar("V")


def split(key: str) -> tuple[str, str]:
    """``"sub/a.png"`` → ``("sub/", "a")``: the folder prefix and the stem."""
    folder, _, name = key.rpartition("/")
    return (f"{folder}/" if folder else ""), PurePosixPath(name).stem


def unpaired(key: str, guide_suffix: str | None) -> str | None:
    """Why the image-extension file `key` is no image of its own when no image claims it (its name says mask or
    guide); None for an image."""
    stem = split(key)[1]
    if stem.endswith(MASK_SUFFIX):
        return "mask with no matching image"
    if guide_suffix and stem.endswith(guide_suffix):
        return "guide with no matching image"
    return None


def lent_name(key: str) -> str:
    """The name under which a mask folder's file `key` lends itself: ``"sub/a"`` for ``sub/a.png`` and
    ``sub/a_mask.png`` alike (see `lent`)."""
    folder, stem = split(key)
    return f"{folder}{stem.removesuffix(MASK_SUFFIX)}"


def lent(key: str, masks: Mapping[str, V]) -> V | None:
    """The mask that a mask folder (`masks`, by `lent_name`) lends the image `key`: the one at the image's relative
    folder, else the one at the folder's top."""
    folder, stem = split(key)
    return masks.get(f"{folder}{stem}") or masks.get(stem)


@dataclass(frozen=True)
class Beside:
    """One folder's image-extension keys by ``<folder><stem>``: where an image's mask and guide are looked for."""

    by_stem: dict[str, list[str]]

    @classmethod
    def of(cls, image_keys: Iterable[str]) -> Beside:
        by_stem: dict[str, list[str]] = {}
        for key in image_keys:
            folder, stem = split(key)
            by_stem.setdefault(f"{folder}{stem}", []).append(key)
        return cls(by_stem)

    def find(self, key: str, suffix: str) -> str | None:
        """The side input of the image `key` whose stem is the image's plus `suffix` (``"_mask"``, a guide suffix):
        the PNG, else the first by name; None when the folder holds none."""
        folder, stem = split(key)
        keys = self.by_stem.get(f"{folder}{stem}{suffix}", [])
        keys = sorted(keys, key=lambda k: (PurePosixPath(k).suffix.lower() != ".png", k))
        return keys[0] if keys else None

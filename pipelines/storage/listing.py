"""The images of a source with their side inputs (`iter_listing`, folder by folder, so that a run starts before the
whole source is listed), and every other file with the reason it is not one. The walk is `walk.py`'s, the
side-input convention `pipelines.pairing`'s."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, NamedTuple

from pipelines import pairing
from pipelines.storage.backend import filesystem
from pipelines.storage.fingerprints import _with_side_inputs
from pipelines.storage.globs import _glob_regex
from pipelines.storage.paths import _place, fold, folds_case, overlap
from pipelines.storage.walk import _LINK_TO_FOLDER, _Found, _walk

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm"}
)
"""Lower-case extensions of the files taken as images (matched case-insensitively): every format
``dipcore.decode_image`` reads (`dipcore.imageio.FORMATS`), so that `restore` and `restore-image` take the same
files. An animated or multi-frame file is listed, and its decode fails with the reason in its row."""


@dataclass(frozen=True)
class ImageEntry:
    """One image of a dataset: its full URL, its key relative to the source root, its side inputs, and what the
    listing says of them (`fingerprint`): a run compares it with the last one's to skip what is unchanged."""

    uri: str  # full URL with protocol, e.g. "s3://bucket/data/sub/a.png", "file:///data/sub/a.png"
    key: str  # POSIX path relative to the source root, e.g. "sub/a.png"
    size: int  # bytes
    mask_uri: str | None = None  # inpainting mask (1 = known pixel)
    guide_uri: str | None = None  # flash image for flash/no-flash
    fingerprint: str | None = None  # e.g. "size=…;etag=…|mask:size=…;etag=…"; None: unknown (always redone)


@dataclass
class Listing:
    """What `iter_listing` found in one folder: the images, and every other file with the reason it is not one."""

    images: list[ImageEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason): not images
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (key, reason): image-like, not restored (links)


def is_image_key(key: str) -> bool:
    """Whether `key` has an image extension (case-insensitive)."""
    return PurePosixPath(key).suffix.lower() in IMAGE_EXTENSIONS


class _Lent(NamedTuple):
    """A mask that a `mask_dir` lends: its URL and its fingerprint."""

    uri: str
    fingerprint: str | None


@dataclass
class _Lister:
    """What `iter_listing` knows before the first folder: the source, the glob, the side-input rules and the masks
    of `mask_dir`; `folder` turns one folder of the walk into its `Listing`."""

    fs: AbstractFileSystem
    root: str
    glob: str | None
    matcher: re.Pattern[str] | None
    guide_suffix: str | None
    masks_in_dir: dict[str, _Lent]  # by `pairing.lent_name`
    mask_dir_prefix: str | None  # the mask folder's key prefix when it lies inside the source

    def uri(self, rel: str) -> str:
        return self.fs.unstrip_protocol(f"{self.root}/{rel}")

    def folder(self, files: dict[str, _Found], links: dict[str, str]) -> Listing:
        """The folder's `Listing`. Masks and guides lie beside their image, so one folder holds all they need (a
        `mask_dir`'s masks are known before the first folder)."""
        listing = Listing()
        claimed: dict[str, str] = {}  # side-input key → reason
        beside = pairing.Beside.of(rel for rel in files if is_image_key(rel))
        for rel in self._images(files, listing.skipped, claimed):
            listing.images.append(self._entry(rel, files, beside, claimed))
        self._links(links, listing)
        listing.skipped.extend(claimed.items())
        listing.skipped.sort()
        return listing

    def _in_mask_folder(self, rel: str) -> bool:
        return self.mask_dir_prefix is not None and rel.startswith(self.mask_dir_prefix)

    def _selected(self, rel: str) -> bool:
        return self.matcher is None or self.matcher.match(rel) is not None

    def _images(self, files: dict[str, _Found], skipped: list[tuple[str, str]], claimed: dict[str, str]) -> list[str]:
        """The keys of `files` that are images; each other file goes to `skipped` (not an image, not selected) or
        to `claimed` (side inputs: the mask folder's files, and masks or guides until their image claims them)."""
        images = []
        for rel in files:
            if self._in_mask_folder(rel):
                claimed.setdefault(rel, "in the mask folder")
            elif not is_image_key(rel):
                skipped.append((rel, "not an image extension"))
            elif why := pairing.unpaired(rel, self.guide_suffix):
                claimed.setdefault(rel, why)
            elif not self._selected(rel):
                skipped.append((rel, f"does not match glob {self.glob!r}"))
            else:
                images.append(rel)
        return images

    def _entry(self, rel: str, files: dict[str, _Found], beside: pairing.Beside, claimed: dict[str, str]) -> ImageEntry:
        """The image `rel` with its side inputs (`pairing`), each claimed from the folder's other files."""
        mask = mask_fp = None
        if mask_key := beside.find(rel, pairing.MASK_SUFFIX):
            claimed[mask_key] = f"mask of {rel}"
            mask, mask_fp = self.uri(mask_key), files[mask_key].fingerprint
        elif lent := pairing.lent(rel, self.masks_in_dir):
            mask, mask_fp = lent.uri, lent.fingerprint
        guide = guide_fp = None
        if self.guide_suffix and (guide_key := beside.find(rel, self.guide_suffix)):
            claimed[guide_key] = f"guide of {rel}"
            guide, guide_fp = self.uri(guide_key), files[guide_key].fingerprint
        fp = _with_side_inputs(
            files[rel].fingerprint, mask_fp, guide_fp, has_mask=mask is not None, has_guide=guide is not None
        )
        return ImageEntry(
            uri=self.uri(rel), key=rel, size=files[rel].size, mask_uri=mask, guide_uri=guide, fingerprint=fp
        )

    def _links(self, links: dict[str, str], listing: Listing) -> None:
        """The symbolic links not followed: excluded (reported by the run) where they look like images, else
        skipped."""
        for rel, why in links.items():
            if self._in_mask_folder(rel):
                listing.skipped.append((rel, why))
            elif not self._selected(rel):
                listing.skipped.append((rel, f"does not match glob {self.glob!r}"))
            elif is_image_key(rel) or why == _LINK_TO_FOLDER:
                listing.excluded.append((rel, why))
            else:
                listing.skipped.append((rel, why))


def iter_listing(
    source: str,
    *,
    glob: str | None = None,
    storage_options: dict | None = None,
    mask_dir: str | None = None,
    guide_suffix: str | None = None,
    exclude: str | None = None,
) -> Iterator[Listing]:
    """The images under `source` (any fsspec URL, recursive) with their side inputs, one folder at a time: a
    `Listing` of the images, skipped files and excluded links found directly in each folder (keys sorted), folders in
    sorted order (depth-first: a folder, then its sub-folders by name), so that a run can start on the first
    folder's images while later ones are still listed. Folders that hold no file are not yielded.

    - `glob` (relative to the source, e.g. ``"*.png"``, ``"**/*.jpg"``, ``"val/*"``) selects images; side inputs
      are matched among all files.
    - Masks: ``<stem>_mask.<ext>`` beside the image, or in `mask_dir` a file at the image's relative folder named
      ``<stem>.<ext>`` or ``<stem>_mask.<ext>`` (at the folder or at `mask_dir`'s top). Files named ``*_mask.*`` are
      never images; a `mask_dir` inside the source contributes no images (its files are skipped "in the mask
      folder" in their own folder's `Listing`; the images that use one name it in their `ImageEntry.mask_uri`).
    - Guides: with `guide_suffix` (e.g. ``"_flash"``), ``<stem><guide_suffix>.<ext>`` beside ``<stem>.<ext>`` is that
      image's guide, not an image of its own.

    Every file that is not an image is in `Listing.skipped` with the reason. Symbolic links (local sources) to
    files inside the source are followed; the others — broken, out of the source, to a folder — are in
    `Listing.excluded` with the reason when they look like images (an image extension, or a folder), so that the
    run reports them, else in `Listing.skipped`. `exclude` (the run's output root) names a folder whose files are
    left out altogether when it lies inside the source: they are the run's own outputs, reports and thumbnails,
    never inputs nor "not images"; where the source is walked, that folder is not even listed. Each image carries
    its `fingerprint` (with its mask's and guide's) from the listing alone.

    How soon a folder comes depends on the backend. Local files and other backends without a find of their own (sftp,
    ftp …) are walked one ``ls`` per folder, and a folder is yielded as soon as it is listed; only the folders still
    to visit are held, never the tree's file list. s3, gs and az list the whole prefix in one ``find`` (the fewest
    requests; s3fs pages through 1,000 keys a request before it returns), and memory:// in one pass over its store
    (its ``ls`` scans the whole store each time), so there the first folder waits for the whole listing.

    A folder that cannot be listed raises where it is met (never a shorter dataset); a missing source
    (`StorageNotFoundError`), a bad glob and a `mask_dir` that cannot be listed raise at the call, before any folder.
    """
    fs, path = filesystem(source, storage_options)
    root, folders = _walk(fs, path, source, prune=_excluded(exclude, source, storage_options))

    # Side-input folder: listed whole, up front; inside the source, its files are excluded from the images.
    masks_in_dir: dict[str, _Lent] = {}
    mask_dir_prefix: str | None = None
    if mask_dir is not None:
        mfs, mpath = filesystem(mask_dir, storage_options)
        mroot, mfolders = _walk(mfs, mpath, mask_dir)
        if type(mfs) is type(fs) and mroot.startswith(root + "/"):
            mask_dir_prefix = mroot[len(root) + 1 :] + "/"
        for _, mfiles, _ in mfolders:  # each folder's keys sorted, and a stem is only ever met within one folder
            for rel, found in mfiles.items():
                if is_image_key(rel):
                    url = mfs.unstrip_protocol(f"{mroot}/{rel}")
                    masks_in_dir.setdefault(pairing.lent_name(rel), _Lent(url, found.fingerprint))

    matcher = _glob_regex(glob) if glob is not None else None
    lister = _Lister(fs, root, glob, matcher, guide_suffix, masks_in_dir, mask_dir_prefix)
    return (lister.folder(files, links) for _, files, links in folders if files or links)


def _excluded(exclude: str | None, source: str, storage_options: dict | None) -> Callable[[str], bool] | None:
    """Whether a folder of the source (its key prefix, ``"out/"``) lies in `exclude`, when that lies inside the
    source: the run's own outputs, reports and thumbnails are never listed."""
    if exclude is None or overlap(exclude, source, storage_options) != "inside":
        return None
    own = _place(exclude, storage_options)[1][len(_place(source, storage_options)[1].rstrip("/")) + 1 :] + "/"
    folds = folds_case(source, storage_options)
    return lambda prefix: (fold(prefix) if folds else prefix).startswith(own)

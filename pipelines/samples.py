"""Sample photos for ``dipflow demo``: scikit-image ships astronaut, coffee and chelsea inside the package, so the
demo needs no download. They are centre-cropped to a square and downscaled, so that a CPU restores them in seconds.
"""

from __future__ import annotations

import numpy as np

from pipelines import storage

__all__ = ["SAMPLES", "sample_images", "write_samples"]

SAMPLES = ("astronaut", "coffee", "chelsea")


def sample_images(size: int = 96, names: tuple[str, ...] = SAMPLES) -> dict[str, np.ndarray]:
    """name → uint8 ``size×size×3`` array: the centre square of each photo, LANCZOS-downscaled."""
    import skimage.data
    from PIL import Image

    from dipcore import center_crop

    out = {}
    for name in names:
        photo = getattr(skimage.data, name)()  # (H, W, 3) uint8
        side = min(photo.shape[:2])
        square = Image.fromarray(center_crop(photo, side, side))
        out[name] = np.asarray(square.resize((size, size), Image.Resampling.LANCZOS))
    return out


def write_samples(folder: str, *, size: int = 96, storage_options: dict | None = None) -> list[str]:
    """Write the sample photos as ``<folder>/<name>.png``; returns their URLs."""
    import dipcore

    uris = []
    for name, image in sample_images(size).items():
        uri = storage.join(folder, f"{name}.png")
        storage.write_bytes_atomic(uri, dipcore.encode_png(image), storage_options)
        uris.append(uri)
    return uris

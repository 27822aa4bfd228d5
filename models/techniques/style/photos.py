"""The content photos of fast style transfer, as the vectorize step stores them (one array file
per photo, so a COCO-sized set stays on disk), and the training batches cut from them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

PHOTOS = "photos"  # the folder of photo_NNNNNN.npy files in the vectorize step's output


class PhotoSet(Sequence):
    """The vectorized photos, read one at a time when indexed (a COCO-sized set stays on disk)."""

    def __init__(self, processed: Path):
        self.files = sorted((processed / PHOTOS).glob("photo_*.npy"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return np.load(self.files[i], allow_pickle=False)


def load_photos(processed: Path) -> PhotoSet:
    return PhotoSet(processed)


def random_crops(photos: Sequence[np.ndarray], size: int, batch: int, seed: int, step: int) -> np.ndarray:
    """A batch of random `size` crops (randomly mirrored), the same for the same (seed, step):
    a resumed run trains on exactly the batches an uninterrupted one would."""
    rng = np.random.default_rng([seed, step])
    crops = []
    for _ in range(batch):
        photo = photos[int(rng.integers(len(photos)))]
        top = int(rng.integers(photo.shape[0] - size + 1))
        left = int(rng.integers(photo.shape[1] - size + 1))
        crop = photo[top : top + size, left : left + size]
        crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return np.stack(crops).astype(np.float32)

"""Fresh training subjects throughout training: a pool of prepared subjects, some replaced every epoch.

Ten fixed subjects gave the network one image and ten shapes to learn: it memorised the label
map's position instead of reading the image (issue 14). Here the pool holds `size` subjects of the
wide distribution (datasets/variability.py) and `refresh` of them are replaced by never-seen ones
at every epoch, so a run of E epochs trains on ``size + refresh * (E - 1)`` different subjects.

Subject ``i`` of the stream always sits in slot ``i % size``: the pool at epoch e holds, in slot
j, the largest index ``i = j (mod size)`` below ``size + refresh * e``. The pool of any epoch is
therefore a function of (seed, epoch) alone, and a resumed run rebuilds exactly the pool it had.
Making and preparing a subject takes a few seconds, paid at the epoch boundary.
"""
from __future__ import annotations

import numpy as np

from ..datasets.templates import Subject
from ..datasets.variability import Variability, label_means, make_wide_subject
from .data import TrainSubject, prepare_subject


def slot_indices(epoch: int, size: int, refresh: int) -> list[int]:
    """The stream index held by each slot at `epoch`."""
    end = size + refresh * epoch  # indices made so far: 0 .. end - 1
    return [j + size * ((end - 1 - j) // size) for j in range(size)]


class SubjectPool:
    """Callable ``pool(epoch) -> list[TrainSubject]`` for ``train()``."""

    def __init__(self, model, base: Subject, seed: int, size: int = 12, refresh: int = 2,
                 variability: Variability = Variability(), spacing=(1.0, 1.0, 1.0), progress: bool = False):
        if size < 1 or refresh < 0 or refresh > size:
            raise ValueError(f"need size >= 1 and 0 <= refresh <= size; got size {size}, refresh {refresh}")
        self.model, self.base, self.seed, self.size, self.refresh = model, base, seed, size, refresh
        self.variability, self.spacing, self.progress = variability, spacing, progress
        self.means = label_means(base)
        self._held: dict[int, TrainSubject] = {}

    def make(self, index: int) -> TrainSubject:
        s = make_wide_subject(self.base, self.seed, index, self.variability, means=self.means)
        return prepare_subject(self.model, s.image, s.labels, self.spacing, s.name)

    def subjects_seen(self, epochs: int) -> int:
        return self.size + self.refresh * max(epochs - 1, 0)

    def __call__(self, epoch: int) -> list[TrainSubject]:
        wanted = slot_indices(epoch, self.size, self.refresh)
        new = [i for i in wanted if i not in self._held]
        if new and self.progress:
            print(f"making {len(new)} fresh training subject(s) for epoch {epoch + 1}", flush=True)
        self._held = {i: self._held[i] if i in self._held else self.make(i) for i in wanted}
        return [self._held[i] for i in wanted]


def wide_cohort(base: Subject, n: int, seed: int, variability: Variability = Variability(), start: int = 0):
    """Subjects ``start .. start + n - 1`` of `seed` from the wide distribution (not prepared)."""
    means = label_means(base)
    return [make_wide_subject(base, seed, i, variability, means=means) for i in range(start, start + n)]


def mean_image(subjects) -> np.ndarray:
    return np.mean([s.image for s in subjects], axis=0)

"""torch Dataset of augmented WFLW training samples (PIPELINE.md section 5).

Randomness: each DataLoader worker (or the main process when num_workers=0) draws from its own
`numpy.random.Generator`, seeded with the SeedSequence entropy [base seed, rank, worker id,
epoch]; `set_epoch` must be called before each epoch (as for DistributedSampler). So a run is
reproducible for a given seed, world size and worker count, resuming at an epoch boundary
gives the same draws as an uninterrupted run, and no two (rank, worker, epoch) share a stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from service.pipeline.config import PipelineConfig

from .transforms import AugmentConfig, train_sample
from .wflw import FaceRecord, load_rgb


class WFLWTrainDataset(Dataset):
    """records -> {"img", "target", "target_weight"} tensors (+ "index")."""

    def __init__(self, records: Sequence[FaceRecord], config: PipelineConfig | None = None,
                 aug: AugmentConfig | None = None, seed: int = 0, rank: int = 0):
        self.records = list(records)
        self.config = config or PipelineConfig()
        self.aug = aug or AugmentConfig()
        self.seed = int(seed)
        self.rank = int(rank)
        self.epoch = 0
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._rng, self._rng_key = None, None

    def rng(self) -> np.random.Generator:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        key = (worker, self.epoch)
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([self.seed, self.rank, worker, self.epoch])
            self._rng_key = key
        return self._rng

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        rgb = load_rgb(record.image_path)
        sample = train_sample(rgb, record.keypoints, record.visible, record.center,
                              record.scale, self.rng(), self.config, self.aug)
        return {
            "img": torch.from_numpy(sample["img"]),
            "target": torch.from_numpy(sample["target"]),
            "target_weight": torch.from_numpy(sample["target_weight"]),
            "index": torch.tensor(index),
        }

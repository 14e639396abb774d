"""Data-parallel training where one sample of the global data is NaN, so one rank meets it at one step.

    mpiexec -n 2 python nan_batch.py raise|skip

skip: every rank skips that step; each prints "NAN-SKIP rank=R skipped=[...] weights_crc32=C".
raise: the rank that meets the NaN raises NonFiniteError and the job ends.
Before training each rank prints "TRAINING-STARTS <unix time>".
"""
import sys
import time
import zlib

import numpy

import mpiprop.network as nn
from mpiprop.distributed import DataParallel, average_metrics
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.network.data.synthetic import synthetic_classification

NAN_SAMPLE = 21  # in the third global batch of 8


def main(policy: str) -> None:
    x, y = synthetic_classification(64, 5, 3, seed=0, separation=1.5)
    x[NAN_SAMPLE] = numpy.nan
    nn.manual_seed(0)
    model = DataParallel(nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3)))
    rank, size = model.comm.rank, model.comm.size
    loader = DataLoader(ArrayDataset(x, y), 8 // size, rank=rank, world_size=size)
    optimizer = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), optimizer, non_finite=policy, average_metrics=average_metrics,
                         quiet=True)
    print(f"TRAINING-STARTS {time.time()}", flush=True)
    history = trainer.fit(loader, 2)
    digest = 0
    for p in model.parameters():
        digest = zlib.crc32(p.data.tobytes(), digest)
    print(f"NAN-SKIP rank={rank} skipped={[r['skipped_steps'] for r in history]} weights_crc32={digest}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])

"""Run by tests/scaleout/test_mpi.py as ``mpiexec -n 2 python train_two_halves.py OUT``: every rank
trains on its half of each batch through fastrnn.mpi; rank 0 also trains one process on
the whole batches (no MPI in that fit). Each rank writes its parameters to OUT."""
import json
import os
import sys

import numpy as np

import fastrnn
import fastrnn.mpi

out = sys.argv[1]
hook = fastrnn.mpi.Allreduce()
rng = np.random.default_rng(0)
n, T, batch = 50, 12, 16                     # the last batch: 2 rows, one per rank
x = rng.standard_normal((n, T, 3))
lengths = rng.integers(1, T + 1, n)
y = rng.integers(0, 4, (n, T))


def model(seed):
    return fastrnn.SequenceModel("lstm", input_size=3, hidden_size=16, output_size=4,
                                 task="per_step_classification", dtype=np.float64, seed=seed)


args = dict(epochs=3, shuffle=False, progress=False, clip_norm=1.0, tbptt=5)
rows = fastrnn.mpi.shard(n, batch)
m = model(seed=1 + hook.rank)                # rank 1 starts elsewhere: the broadcast fixes it
h = m.fit(x[rows], y[rows], lengths[rows], batch_size=batch // hook.size, allreduce=hook,
          checkpoint=os.path.join(out, f"ckpt-rank{hook.rank}.fastrnn"), **args)
np.savez(os.path.join(out, f"rank{hook.rank}.npz"), **m.named_parameters())
if hook.rank == 0:
    single = model(seed=1)
    h1 = single.fit(x, y, lengths, batch_size=batch, **args)
    np.savez(os.path.join(out, "single.npz"), **single.named_parameters())
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump({"ranks": hook.size, "parallel": h["loss"], "single": h1["loss"],
                   "steps": [h["steps"], h1["steps"]]}, f)

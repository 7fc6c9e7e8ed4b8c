"""Data-parallel training with fastact.distributed: the digits VGG on N MPI processes.

    pip install ".[mpi]"                               # mpi4py and the mpich wheel (mpiexec)
    mpiexec -n 2 python docs/examples/ddp_digits.py    # or plain python: one process, the same result

Each step's global batch (the same samples, in the same order, as a one-process run) is cut into N
contiguous slices, each rank computes the mean loss's gradient over its slice, one allreduce averages
the gradients, and every rank takes the same Adam step: the weights stay identical on all ranks, and
equal to the one-process run's up to float rounding. Rank 0 prints. ``python -m fastact train
--distributed`` is the same loop with checkpoints, evaluation and failure handling.
"""

import numpy as np

from fastact import data, distributed, models, nn, optim

BATCH = 32  # the global batch: a multiple of the number of ranks


def main(epochs=3):
    try:
        distributed.init()
    except ImportError:  # no mpi4py: one process, rank 0 of 1
        pass
    rank, size = distributed.rank(), distributed.size()
    xtr, ytr, xte, yte = data.load_digits()
    net = models.vgg([16, 16, "M", 32, "M"], in_channels=1, num_classes=10, input_size=8, hidden=(128,),
                     seed=0)
    distributed.broadcast_parameters(net)           # every rank starts from rank 0's weights
    opt = optim.Adam(net.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, epochs + 1):
        net.train()
        total = np.zeros(2)                         # this rank's loss sum and image count
        for xb, yb in data.batches(xtr, ytr, BATCH, seed=0, epoch=epoch):
            xs, ys = distributed.shard(xb, yb)      # this rank's contiguous slice
            loss = loss_fn(net(xs), ys)
            opt.zero_grad()
            # unequal slices (a last batch that N does not divide): weigh by the slice's share
            net.backward(loss_fn.backward() * np.float32(len(ys) * size / len(yb)))
            distributed.allreduce_gradients(net)    # one in-place Allreduce of all gradients, / N
            opt.step()
            total += (loss * len(ys), len(ys))
        loss_sum, seen = distributed.allreduce_sum(total)
        distributed.check_identical(net)            # raises DivergenceError if the ranks differ
        # evaluation sharded over the ranks: each counts its slice, one allreduce adds them up
        net.eval()
        xs, ys = distributed.shard(xte, yte)
        correct, count = distributed.allreduce_sum([np.sum(np.argmax(net(xs), axis=1) == ys), len(ys)])
        if rank == 0:
            print(f"epoch {epoch}: loss {loss_sum / seen:.4f}, test accuracy {correct / count:.2%} "
                  f"({size} rank{'s' if size > 1 else ''}, checksum {distributed.checksum(net)})")


if __name__ == "__main__":
    main()

"""Run under ``mpirun -np N`` by test_engine_distributed.py: trains the model of
:func:`setup` data-parallel and has rank 0 pickle what the test compares with one process.

    mpirun -np 2 python tests/engine/mpi_training_script.py OUT.pkl BATCH_SIZE STEPS
    mpirun -np 2 python tests/engine/mpi_training_script.py OUT.pkl BATCH_SIZE budget SECONDS

The ``budget`` form trains under a wall-clock budget with every rank but 0 running slower
(a sleep before each step), so the ranks' own clocks disagree.
"""

from __future__ import annotations

import dataclasses
import pickle
import sys
import time

import numpy as np

from charlstm.engine import CharLSTM, ModelConfig, TrainConfig, Trainer, Vocab
from charlstm.engine.distributed import Communicator, MpiCommunicator, from_environment

TEXT = "".join(f"{i * 7919 % 1000:03d} the quick brown fox jumps over the lazy dog; " for i in range(25))


def setup(batch_size: int, steps: int, comm: Communicator | None = None) -> Trainer:
    """A small float64 model with dropout, tight clipping (so clipping acts on most steps),
    a validation slice evaluated every 5 steps and an epoch boundary within the run."""
    vocab = Vocab.from_text(TEXT)
    model = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=8, hidden_size=24, num_layers=2,
                                 dropout=0.2, dtype="float64"), seed=3)
    config = TrainConfig(seq_len=16, batch_size=batch_size, steps=steps, learning_rate=1e-2, clip=0.5,
                         weight_decay=0.01, seed=5, val_fraction=0.2, eval_every=5)
    return Trainer(model, vocab, TEXT, config, workers=1, comm=comm)


def main() -> None:
    out, batch_size = sys.argv[1], int(sys.argv[2])
    comm = from_environment()
    assert isinstance(comm, MpiCommunicator), "run this under mpirun with more than one rank"
    if sys.argv[3] == "budget":
        trainer = setup(batch_size, 1, comm)
        trainer.config = dataclasses.replace(trainer.config, steps=None, max_seconds=float(sys.argv[4]))
        trainer = Trainer(trainer.model, trainer.vocab, TEXT, trainer.config, workers=1, comm=comm)
        skew = lambda: time.sleep(0.01 * comm.rank)  # noqa: E731 - returns None: never stops
        reports = [(p.step, p.learning_rate) for p in trainer.run(should_stop=skew)]
    else:
        trainer = setup(batch_size, int(sys.argv[3]), comm)
        reports = [(p.train_loss, p.grad_norm, p.val_loss, p.allreduce_seconds) for p in trainer.run()]
    state = trainer.capture()  # collective: the whole batch's carried state
    params = comm.allgather(trainer.model.params.flat.copy())
    reports = comm.allgather(reports)
    if comm.rank == 0:
        with open(out, "wb") as f:
            pickle.dump({"size": comm.size, "params": params, "reports": reports,
                         "windows_per_epoch": trainer.windows_per_epoch, "state": state}, f)


if __name__ == "__main__":
    np.seterr(all="raise")
    main()

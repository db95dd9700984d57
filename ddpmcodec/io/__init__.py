"""What crosses the disk: checkpoints (diffusers folders, fingerprints), images (.npz, PNG,
CIFAR-10), results folders, and the one atomic writer. Depends only on :mod:`ddpmcodec.core`."""

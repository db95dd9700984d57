"""The pipelines' defaults that the command line shows in --help: torch-free, so that
--help answers without starting torch."""

DEFAULT_NFE = 50          # network evaluations per image of the importance estimator
FAST_BATCH_CUDA = 512     # (image, timestep) pairs per call of the fast engine on a GPU
FAST_BATCH_CPU = 16       # ... on a CPU (the embedded model's throughput is flat 8..32)
PLAIN_BATCH = 64          # images per call of the plain loop
SHARD_SIZE = 256          # images per shard file of `ddpmcodec encode --shard-size`

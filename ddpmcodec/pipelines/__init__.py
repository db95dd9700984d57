"""The long computations: each takes a loaded model and images and writes a results folder
(nll, the fast engine and the estimator, bench, train, report, the sampling experiments,
the progressive codec's rate-distortion measurement). Built on core, io, codec; draws its
figures through :mod:`ddpmcodec.analysis`, which reads only the folders written here."""

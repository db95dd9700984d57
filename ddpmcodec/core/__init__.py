"""The math, in plain functions on tensors (float64 schedules and bound terms, units in
docstrings): no networks are loaded, no files are read or written here. Depends on
nothing else in the package but :mod:`ddpmcodec.errors`."""

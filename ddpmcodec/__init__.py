"""ddpmcodec: likelihoods, rate-distortion and real compression with DDPMs.

Index convention: timestep index i in 0..T-1 is the paper's t = i + 1 and is what the
network receives (see :mod:`ddpmcodec.core.diffusion`).
"""
__version__ = "0.1.0"

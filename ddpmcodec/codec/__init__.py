"""Real compression through the latent chain of a DDPM.

* :mod:`.container` -- the versioned file format shared by every codec;
* :mod:`.base` -- the one compress/decompress contract (:class:`Codec`, :class:`Encoded`,
  :class:`Decoded`, :class:`CodecStats`) and the checks every decoder makes;
* :mod:`.coder` -- the one wrapper around constriction's entropy coders and its one
  error policy (bad data -> DDPMCodecError, a bug keeps its traceback);
* :mod:`.bitsback` -- lossless coding with bits-back ANS in Bit-Swap order;
* :mod:`.channel` -- channel simulation of Gaussians (PFR) under shared randomness;
* :mod:`.progressive` -- progressive lossy coding through the latent chain.
"""
from ddpmcodec.codec.base import (
           Codec,
           CodecStats,
           Decoded,
           Encoded,
           decode_bytes,
           get_codec,
)
from ddpmcodec.codec.container import Header, pack, pixel_checksum, read_header, unpack

__all__ = ["Codec", "CodecStats", "Decoded", "Encoded", "Header", "decode_bytes", "get_codec",
           "pack", "pixel_checksum", "read_header", "unpack"]

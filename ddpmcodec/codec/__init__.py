"""Real compression through the latent chain of a DDPM.

A map of the package. Every codec fulfils one contract, :mod:`.api` (``Codec.encode`` ->
``Encoded``, ``Codec.decode`` -> ``Decoded``, ``CodecStats`` with the whole file's bits
beside the net bits and the bound, and the registry ``get_codec(mode)``); what all codecs
check sits beside it in :mod:`.checks` (the images, the model a file needs, the decoded
pixels), :mod:`.network` (the chain a file names and p_theta of one step in the file's
batch layout) and :mod:`.reproducibility` (device kinds, thread counts and the torch
settings under which float32 results repeat). The file format is one subpackage,
:mod:`.container`: constants and bounds, field readers and writers (the one LEB128 and
CRC implementation), the ``Header``, the chain fields, and a module per format
generation (``v1`` read only, ``v2``, the compact ``v3``, the model-free ``v4`` with its
pixel checksum, the compact model-free ``v5``). The entropy coders are
:mod:`.entropy`: the constriction wrapper with its error policy, the prefix-aware
arithmetic coder and the libm-free coding models. The lossless codec is :mod:`.lossless`
(bits-back ANS in Bit-Swap order: params, per-latent grids, the ANS stack, seeds, the
codec, and the classical streams it falls back to and seeds with: JPEG-XL and
WebP-lossless, one module each, and the model-free mode that chooses between them). The
progressive codec is :mod:`.progressive` (params and schedule, payload framing, variance
levels, encoder, decoder, reconstruction, the lossless pixel layer), with its channel
simulation of Gaussians in
:mod:`.progressive.channel` (keys, candidate generators v1 and v2, the PFR search, the
index code, the search processes). Imports only point down this list: nothing in
``container`` or ``entropy`` knows a codec, and no codec knows another but through the
registry (the lossless codec uses its own ``classical`` module).
"""
from ddpmcodec.codec.api import Codec, CodecStats, Decoded, Encoded, decode_bytes, get_codec
from ddpmcodec.codec.container import Header, pack, pixel_checksum, read_header, unpack

__all__ = ["Codec", "CodecStats", "Decoded", "Encoded", "Header", "decode_bytes", "get_codec",
           "pack", "pixel_checksum", "read_header", "unpack"]

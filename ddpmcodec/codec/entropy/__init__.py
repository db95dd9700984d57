"""The entropy coders both codecs code through.

* :mod:`.coder` -- the one wrapper around constriction (the lossless codec's ANS stack,
  the range coder of progressive formats 1-2) and its one error policy;
* :mod:`.arith` -- the exact, prefix-aware arithmetic coder of progressive format 3.
"""

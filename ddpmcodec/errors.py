"""The one exception type a user's mistake raises.

The CLI turns a :class:`DDPMCodecError` into a one-line message and a non-zero exit code;
anything else is a bug and keeps its traceback.
"""


class DDPMCodecError(Exception):
    """A problem with the user's input or environment (bad file, wrong shape, offline...)."""

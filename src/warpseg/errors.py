"""Errors raised for bad input: each message says what is wrong and what to do."""


class WarpsegError(ValueError):
    """Base class of every user-facing error in warpseg."""


class InputError(WarpsegError):
    """An input file or array cannot be used as given."""


class GeometryError(WarpsegError):
    """Two inputs do not share the geometry they must share."""


class Cancelled(WarpsegError):
    """The user stopped a running job."""

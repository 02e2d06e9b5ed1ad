"""The one exception type for mistakes a user can make and fix."""


class LatentFitError(Exception):
    """A bad input (path, image, model file, option): the message names it and the fix."""

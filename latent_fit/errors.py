"""The exception types for mistakes a user can make and fix."""


class LatentFitError(Exception):
    """A bad input (path, image, model file, option): the message names it and the fix."""


class ArgumentError(LatentFitError):
    """A bad argument value. The message names the library argument (`reg 'x': ...`); the CLI
    shows the same line with the flag that set it (`--reg 'x': ...`)."""

    def __init__(self, arg: str, value, reason: str):
        self.arg, self.value, self.reason = arg, value, reason
        super().__init__(f"{arg} {value!r}: {reason}")

    def with_flag(self, flag: str) -> str:
        return f"{flag} {self.value!r}: {self.reason}"

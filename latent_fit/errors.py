"""The exception types for mistakes a user can make and fix."""

MAX_MESSAGE = 300


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` as one printable line of fewer than `limit` characters: line breaks, control
    characters and the undecodable bytes of file names escaped, the middle cut out when too long."""
    if len(text) > 4 * limit:
        text = text[: 2 * limit] + "…" + text[-limit:]
    text = "".join(c if c.isprintable() else _escape(c) for c in text)
    return text if len(text) < limit else text[: limit - 81] + "…" + text[-79:]


def _escape(c: str) -> str:
    if "\udc80" <= c <= "\udcff":  # a byte of a file name that is not UTF-8 (os.fsdecode)
        return f"\\x{ord(c) - 0xDC00:02x}"
    return c.encode("unicode_escape").decode("ascii")


class LatentFitError(Exception):
    """A bad input (path, image, model file, option): the message names it and the fix, in one
    printable line of fewer than MAX_MESSAGE characters."""

    def __init__(self, message: str = ""):
        super().__init__(one_line(str(message)))


class ArgumentError(LatentFitError):
    """A bad argument value. The message names the library argument (`reg 'x': ...`); the CLI
    shows the same line with the flag that set it (`--reg 'x': ...`)."""

    def __init__(self, arg: str, value, reason: str):
        self.arg, self.value, self.reason = arg, value, reason
        super().__init__(f"{arg} {value!r}: {reason}")

    def with_flag(self, flag: str) -> str:
        return one_line(f"{flag} {self.value!r}: {self.reason}")

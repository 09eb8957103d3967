"""Error types. Every error a user can cause (bad config, bad data, unreachable exchange)
is an :class:`MmbotError` with a one-line, specific message; the CLI prints it without a
traceback and exits non-zero."""


class MmbotError(Exception):
    """Base class for errors shown to the user as one line."""

    exit_code = 2


class ConfigError(MmbotError):
    """A configuration file or option is invalid. The message names the field."""


class DataError(MmbotError):
    """A data file (recording, capture, model) is malformed. The message names file and place."""


class ExchangeError(MmbotError):
    """The exchange is unknown, unreachable or answered something unusable."""


class BookError(MmbotError):
    """An order book is crossed or empty where a valid book is required."""


class OrderStateError(MmbotError):
    """An order was asked to make a transition its state machine forbids."""

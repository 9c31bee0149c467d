"""Domain errors. Each carries a message meant for the user (CLI exit or HTTP 4xx)."""


class PricematchError(Exception):
    """Base of every error a user can cause and fix."""


class CatalogueError(PricematchError):
    """A listings CSV that cannot be read: missing columns, duplicate ids, bad encoding."""


class ImageError(PricematchError):
    """An image that cannot be used: missing, corrupt, not an image, too large."""


class EncoderError(PricematchError):
    """An encoder artifact that cannot be loaded or an unknown encoder name."""


class BundleError(PricematchError):
    """A bundle folder that is missing, incomplete or fails its checksums."""


class NotFoundError(PricematchError):
    """An unknown posting_id."""


class StoreError(PricematchError):
    """A vector store that cannot be used: not installed, unreachable, or out of step with
    the catalogue."""


class ConfigurationError(PricematchError):
    """What the loaded model or server settings cannot do (e.g. a ranker needing a signal
    the live catalogue does not search): the operator's to fix, never the request's."""


class CancelledError(PricematchError):
    """Work stopped on request (`index.progress.cancellable`): its client went away or the
    process is stopping."""

"""The one error type for bad datasets."""


class DatasetError(ValueError):
    """A malformed or inconsistent dataset. The message is one line naming the file and
    the image or annotation id; the command-line tools print it without a traceback."""

"""Errors raised for bad user input.

Every error names the file, row, column or config key at fault and what to do about it, so that a user
never has to read a traceback from deep inside pandas or torch.
"""


class InputError(ValueError):
    """Bad user input (config, CSV, image, mask): the message says where and what to do."""


def where(source: object, row: int | None = None, column: str | None = None) -> str:
    """Format a location such as ``'data/train.csv' row 12 column 'Age'`` for error messages."""
    text = f"'{source}'"
    if row is not None:
        text += f" row {row}"
    if column is not None:
        text += f" column '{column}'"
    return text

"""Errors that ferlib reports to people: one clear sentence, no deep traceback."""


class FERError(Exception):
    """Base class of the errors ferlib raises for bad input or bad settings.

    The command line prints only the message of these (``error: ...``) and
    exits with status 2; other exceptions are bugs and keep their traceback.
    """


class DataFormatError(FERError, ValueError):
    """A data file is missing, empty or not in the expected format.

    The message names the file and, where it applies, the 1-based data row
    (the header is not counted) and the line of the file.
    """

    def __init__(self, path, message, row=None, line=None):
        self.path, self.row, self.line = str(path), row, line
        where = str(path)
        if row is not None:
            where += f", row {row}" + (f" (line {line})" if line is not None else "")
        super().__init__(f"{where}: {message}")

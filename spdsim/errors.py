"""User-facing errors: one line naming the field and the allowed values; the CLI maps them to exit code 2."""


class SpdsimError(ValueError):
    """A user mistake (bad scenario, file, option); its message is printed as one line, exit code 2."""

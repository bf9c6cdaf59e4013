"""User-facing store errors: one line that names the problem and the fix, exit code 2."""


class StoreError(Exception):
    """A store problem the user can fix (missing, damaged, locked, full disk). The CLI exits 2."""

    exit_code = 2

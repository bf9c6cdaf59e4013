"""User-facing errors: one line that names the problem and the fix, exit code 2."""


class GhostTrackError(Exception):
    """Bad input or state the user can fix. The CLI prints `error: <message>` and exits 2."""

    exit_code = 2

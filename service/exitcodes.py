"""``hyperctl``'s exit codes, shared by the CLI and the tasks' own commands."""

EXIT_OK = 0  # success
EXIT_FAILED = 1  # the job failed or was stopped
EXIT_BAD_INPUT = 2  # bad input: job spec, arguments, unreachable storage or cluster, unknown id
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK"]

"""The process's descriptor limit, against what its bounded intakes may hold open.

Every endpoint that accepts connections has a cap (TCP intake 1,024, the HTTP endpoint 64,
the management port 64), so together they can never take every descriptor, and the intake
keeps what it needs whatever the HTTP clients do.  That holds only if the limit is above the
sum, plus a reserve for what the process opens itself: listeners, the sink's connections,
the spool's files, the workers' pipes.  At start the soft limit is raised as far as needed
(up to the hard limit, which needs no privilege); if even the hard limit is short, that is
said once, naming the numbers.
"""

from __future__ import annotations

import resource

# Descriptors the process opens besides its accepted connections: listening sockets, the
# sink's connections (a few), the spool's directory and files, the workers' pipes, logs.
RESERVE = 128


def needed(*caps: int) -> int:
    """The limit that ``caps`` (the connection caps of the endpoints that are on) need."""
    return sum(caps) + RESERVE


def ensure(want: int) -> str | None:
    """Raise the soft descriptor limit to ``want`` if it is lower (at most to the hard
    limit); a warning to log when the limit stays below ``want``, else None."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return None
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    if soft >= want:
        return None
    return (
        f"the descriptor limit is {soft} (hard {hard}), under the {want} that the "
        "connection caps and their reserve need: past it new connections fail "
        f"(raise it: ulimit -n {want})"
    )

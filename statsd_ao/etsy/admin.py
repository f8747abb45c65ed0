"""etsy statsd's management interface, so scripts written against its TCP port keep working.

`AdminCommands.handle` turns one command line into etsy's exact answer; it does no IO and
reads the proxy through the `AdminState` seam.  `serve_admin` is the small asyncio server
around it (etsy listened on port 8126; here it is off unless asked for).

Answers, as etsy statsd writes them:

- ``stats``: ``uptime: N``, then ``group.metric: value`` lines (a metric named ``last_*``
  holds a time and is shown as seconds since), then ``END`` and a blank line;
- ``counters`` / ``gauges`` / ``timers``: the dict as Node's ``util.inspect`` prints it
  (`inspect`), then ``END`` and a blank line;
- ``delcounters`` / ``delgauges`` / ``deltimers`` NAME...: ``deleted: NAME`` per series
  deleted (``NAME`` ending in ``.*`` deletes that whole folder), ``metric NAME not found``
  when none matched, then ``END`` and a blank line;
- ``health``: ``health: up`` or ``health: down``; ``health up|down`` sets it first;
- ``config``: a blank line, then ``key: value`` and ``section > key: value`` lines (any key
  named ``token`` is redacted);
- ``help``: the command list; ``quit``: closes the connection; anything else: ``ERROR``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol

from statsd_ao.core.logs import RateLimitedLog
from statsd_ao.etsy.configjs import JsRegExp, js_number_string

log = logging.getLogger(__name__)

END = "END\n\n"
HELP = (
    "Commands: stats, counters, timers, gauges, delcounters, deltimers, delgauges, health,"
    " config, quit\n\n"
)
ERROR = "ERROR\n"
QUIT = "quit"

Health = Literal["up", "down"]
_HEALTH: dict[str, Health] = {"up": "up", "down": "down"}


class AdminState(Protocol):
    """What the management interface reads and changes; implemented by the running proxy.

    Names are the series keys the proxy shows to etsy scripts; the handler only compares
    them.  Every method runs on the loop thread and must not block.
    """

    def counters(self) -> Mapping[str, float]:
        """Counter totals of the current interval."""
        ...

    def gauges(self) -> Mapping[str, float]:
        """Current gauge values."""
        ...

    def timers(self) -> Mapping[str, Sequence[float]]:
        """Timer samples of the current interval."""
        ...

    def stats(self) -> Mapping[str, float]:
        """``group.metric`` -> value, in display order; etsy's are ``messages.last_msg_seen``
        and ``messages.bad_lines_seen``.  A metric whose own name starts with ``last_``
        holds a Unix time."""
        ...

    def health(self) -> Health: ...

    def set_health(self, status: Health) -> None: ...

    def delete_counters(self, names: Sequence[str]) -> None: ...

    def delete_gauges(self, names: Sequence[str]) -> None: ...

    def delete_timers(self, names: Sequence[str]) -> None: ...


def parse_command(line: str) -> tuple[str, list[str]]:
    """The command and its arguments, split as etsy splits them (on single spaces)."""
    command, *arguments = line.strip().split(" ")
    return command, arguments


class AdminCommands:
    """Answers management commands against an `AdminState`; ``started_at`` and ``clock`` are
    Unix times in seconds."""

    def __init__(
        self,
        state: AdminState,
        *,
        started_at: float,
        clock: Callable[[], float] = time.time,
        config: Mapping[str, object] | None = None,
    ) -> None:
        self._state = state
        self._started_at = started_at
        self._clock = clock
        self._config = config or {}
        self._answers: dict[str, Callable[[list[str]], str]] = {
            "stats": lambda _: self._stats(),
            "counters": lambda _: inspect(state.counters()) + "\n" + END,
            "gauges": lambda _: inspect(state.gauges()) + "\n" + END,
            "timers": lambda _: inspect(state.timers()) + "\n" + END,
            "delcounters": lambda args: _delete(state.counters(), state.delete_counters, args),
            "delgauges": lambda args: _delete(state.gauges(), state.delete_gauges, args),
            "deltimers": lambda args: _delete(state.timers(), state.delete_timers, args),
            "health": self._health,
            "config": lambda _: _config(self._config),
            "help": lambda _: HELP,
            QUIT: lambda _: "",
        }

    def handle(self, line: str) -> str:
        """etsy's answer to one command line (``quit`` answers nothing: close the connection)."""
        command, arguments = parse_command(line)
        answer = self._answers.get(command)
        return ERROR if answer is None else answer(arguments)

    def _stats(self) -> str:
        now = _js_round(self._clock())
        lines = [f"uptime: {js_number_string(now - _js_round(self._started_at))}\n"]
        for name, value in self._state.stats().items():
            shown = now - _js_round(value) if name.rpartition(".")[2].startswith("last_") else value
            lines.append(f"{name}: {js_number_string(shown)}\n")
        return "".join(lines) + END

    def _health(self, arguments: list[str]) -> str:
        wanted = _HEALTH.get(arguments[0].lower()) if arguments else None
        if wanted is not None:
            self._state.set_health(wanted)
        return f"health: {self._state.health()}\n"


def _delete(
    existing: Mapping[str, object], delete: Callable[[Sequence[str]], None], arguments: list[str]
) -> str:
    """etsy's ``delete_stats``: each argument is a name, or a ``folder.*`` prefix."""
    alive = dict.fromkeys(existing)  # in the state's order, as etsy walks its object
    lines: list[str] = []
    for argument in arguments:
        matches = [argument] if argument in alive else []
        if argument.endswith(".*"):
            folder = argument[:-1]
            matches += [name for name in alive if name.startswith(folder) and name != argument]
        if not matches:
            lines.append(f"metric {argument} not found\n")
            continue
        delete(matches)
        for name in matches:
            del alive[name]
        lines.extend(f"deleted: {name}\n" for name in matches)
    return "".join(lines) + END


def _config(config: Mapping[str, object]) -> str:
    """etsy's ``writeConfig``: scalars as ``key: value``, one level of objects flattened."""
    lines = ["\n"]
    for key, value in config.items():
        if isinstance(value, Mapping | list):
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            lines.extend(f"{key} > {sub}: {_js_string(sub, item)}\n" for sub, item in items)
        elif value is not None and not isinstance(value, JsRegExp):
            # typeof null and of a regex is "object", with no keys to list: nothing printed
            lines.append(f"{key}: {_js_string(key, value)}\n")
    return "".join(lines)


def _js_string(key: object, value: object) -> str:
    """JavaScript's ``String(value)``, with any ``token`` redacted."""
    if key == "token":
        return "<redacted>"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int | float):
        return js_number_string(value)
    if isinstance(value, list):
        return ",".join("" if item is None else _js_string(None, item) for item in value)
    return "[object Object]" if isinstance(value, Mapping) else str(value)


def _js_round(value: float) -> float:
    """``Math.round``: halves go up."""
    return math.floor(value + 0.5) if math.isfinite(value) else value


# --- Node's util.inspect, for the dicts etsy dumps --------------------------------------------

# util.inspect's defaults (Node 12 and later).
BREAK_LENGTH = 80
MAX_ARRAY_LENGTH = 100
COMPACT = 3
_PLAIN_KEY_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_PLAIN_KEY = _PLAIN_KEY_FIRST | frozenset("0123456789")
_ESCAPES = {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r", 39: "\\'", 92: "\\\\"}


def inspect(values: Mapping[str, float] | Mapping[str, Sequence[float]]) -> str:
    """``util.inspect(values)`` as Node prints a dict of numbers or of number lists."""
    if not values:
        return "{}"
    output = [f"{_key(key)}: {_inspect_value(value)}" for key, value in values.items()]
    return _reduce(output, "{", "}", indentation=0, grouped=False)


def _inspect_value(value: float | Sequence[float]) -> str:
    if isinstance(value, int | float):
        return _number(value)
    if not value:
        return "[]"
    indentation = 2  # inside the top-level object
    output = [_number(item) for item in value[:MAX_ARRAY_LENGTH]]
    hidden = len(value) - MAX_ARRAY_LENGTH
    if hidden > 0:
        output.append(f"... {hidden} more item{'s' if hidden > 1 else ''}")
    entries = len(output)
    if entries > 6:
        output = _group(output, indentation, hidden > 0)
    return _reduce(output, "[", "]", indentation, grouped=len(output) != entries)


def _number(value: float) -> str:
    if value == 0 and math.copysign(1.0, value) < 0:
        return "-0"  # inspect shows the sign that String() hides
    return js_number_string(value)


def _key(key: str) -> str:
    if key and key[0] in _PLAIN_KEY_FIRST and all(c in _PLAIN_KEY for c in key):
        return key
    quote = "'"
    if "'" in key:
        if '"' not in key:
            quote = '"'
        elif "`" not in key and "${" not in key:
            quote = "`"
    out = []
    for char in key:
        code = ord(char)
        if code < 32 or code == 92 or 127 <= code <= 159 or (char == quote == "'"):
            out.append(_ESCAPES.get(code) or f"\\x{code:02X}")
        else:
            out.append(char)
    return quote + "".join(out) + quote


def _reduce(output: list[str], opening: str, closing: str, indentation: int, grouped: bool) -> str:
    """One line when it fits in `BREAK_LENGTH`, else one entry (or grouped row) per line."""
    if not grouped:
        start = len(output) + indentation + len(opening) + 10
        if _fits(output, start):
            joined = ", ".join(output)
            if "\n" not in joined:
                return f"{opening} {joined} {closing}"
    newline = "\n" + " " * indentation
    return f"{opening}{newline}  " + f",{newline}  ".join(output) + f"{newline}{closing}"


def _fits(output: list[str], start: int) -> bool:
    total = len(output) + start
    if total + len(output) > BREAK_LENGTH:
        return False
    for entry in output:
        total += _utf16_length(entry)
        if total > BREAK_LENGTH:
            return False
    return True


def _group(output: list[str], indentation: int, has_more: bool) -> list[str]:
    """Node's ``groupArrayElements``: many short numbers in right-aligned columns."""
    count = len(output) - 1 if has_more else len(output)
    lengths = [len(entry) for entry in output[:count]]
    separator = 2  # ", "
    total = sum(lengths) + separator * count
    longest = max(lengths)
    widest = longest + separator
    # Group only when three columns fit and no entry dwarfs the rest.
    if not (widest * 3 + indentation < BREAK_LENGTH and (total / widest > 5 or longest <= 6)):
        return output
    bias = math.sqrt(widest - total / len(output))
    biased = max(widest - 3 - bias, 1)
    columns = min(
        math.floor(math.sqrt(2.5 * biased * count) / biased + 0.5),
        (BREAK_LENGTH - indentation) // widest,
        COMPACT * 4,
        15,
    )
    if columns <= 1:
        return output
    column_widths = [max(lengths[i::columns], default=0) + separator for i in range(columns)]
    rows = []
    for row_start in range(0, count, columns):
        row = output[row_start : min(row_start + columns, count)]
        cells = [f"{entry}, ".rjust(column_widths[i]) for i, entry in enumerate(row[:-1])]
        cells.append(row[-1].rjust(column_widths[len(row) - 1] - separator))
        rows.append("".join(cells))
    if has_more:
        rows.append(output[-1])
    return rows


def _utf16_length(text: str) -> int:
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


# --- the TCP server -------------------------------------------------------------------------


async def serve_admin(host: str, port: int, commands: AdminCommands) -> asyncio.Server:
    """Listen on ``host:port`` and answer each line with ``commands``; ``quit`` or the end of
    input closes the connection.  At `MAX_ADMIN_SESSIONS` open sessions a new one closes the
    session idle the longest (logged at most once a minute).  Close the returned server to
    stop listening."""
    sessions = _Sessions()

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sessions.open(writer)
        try:
            while line := await _read_line(reader):
                sessions.touch(writer)
                text = line.decode("utf-8", "replace")
                if parse_command(text)[0] == QUIT:
                    break
                writer.write(commands.handle(text).encode("utf-8"))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
        finally:
            sessions.close(writer)
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(session, host, port)


class AdminEndpoint:
    """The management interface as a part of the app's lifecycle."""

    def __init__(self, host: str, port: int, commands: AdminCommands) -> None:
        self._host, self._port = host, port
        self._commands = commands
        self._server: asyncio.Server | None = None

    def describe(self) -> str:
        return f"admin {self._host}:{self._port}"

    async def open(self) -> None:
        self._server = await serve_admin(self._host, self._port, self._commands)
        port = self._server.sockets[0].getsockname()[1]
        log.info("listening on admin tcp %s:%d (etsy management interface)", self._host, port)

    async def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()


# Open management sessions at most; each holds a reader buffer of up to one 64 KiB line.
MAX_ADMIN_SESSIONS = 64
_eviction_log = RateLimitedLog(log, 60.0)


class _Sessions:
    """The open management sessions, idle longest first."""

    def __init__(self) -> None:
        self._order: OrderedDict[asyncio.StreamWriter, None] = OrderedDict()

    def open(self, writer: asyncio.StreamWriter) -> None:
        if len(self._order) >= MAX_ADMIN_SESSIONS:
            victim = next(iter(self._order))
            _eviction_log.warning(
                "admin",
                "admin: %d sessions open, the limit: closed the one idle longest (from %s)",
                MAX_ADMIN_SESSIONS,
                victim.get_extra_info("peername"),
            )
            self.close(victim)
        self._order[writer] = None

    def touch(self, writer: asyncio.StreamWriter) -> None:
        if writer in self._order:
            self._order.move_to_end(writer)

    def close(self, writer: asyncio.StreamWriter) -> None:
        self._order.pop(writer, None)
        writer.close()


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """The next line; empty at the end of input, on a reset, or past the 64 KiB line limit."""
    try:
        return await reader.readline()
    except (ConnectionError, ValueError):
        return b""

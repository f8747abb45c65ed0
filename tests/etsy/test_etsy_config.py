"""etsy statsd configuration files: the literal reader (`statsd_ao.etsy.configjs`) and what the
options mean (`statsd_ao.etsy.translation`).

Tables for the grammar and for each option; the sample files under ``tests/data/etsy`` (written
from etsy's and the backends' documented options) with their effective settings; Hypothesis for
the reader's contracts: any value written as a JavaScript literal, formatted any way, reads
back equal, and no text makes it raise anything but `EtsyConfigError`.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_ao.etsy.configjs import (
    EtsyConfigError,
    JsRegExp,
    is_identifier,
    load_config,
    parse_config,
)
from statsd_ao.etsy.translation import (
    APPOPTICS_API_URL,
    INTERNAL_METRICS,
    LIBRATO_API_URL,
    DeleteIdle,
    Translation,
    translate,
)

DATA = Path(__file__).parent.parent / "data" / "etsy"
TOKEN = "ca98e2bc23b1bfd0cbe9041e824f610491129bb952d52ca4ac22cf3eab5a1c32"


# --- the reader: grammar --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", {}),
        ("{port: 8125}", {"port": 8125}),
        ("({port: 8125})", {"port": 8125}),
        ("(({a: 1}));;", {"a": 1}),
        ("\ufeff{a: 1}", {"a": 1}),
        ("{\"a\": 1, 'b': 2, $c_1: 3}", {"a": 1, "b": 2, "$c_1": 3}),
        ("{a: 1,}", {"a": 1}),
        ("{a: [1, 2,],}", {"a": [1, 2]}),
        ("{ a: 1\n, b: 2\n}", {"a": 1, "b": 2}),  # etsy's leading-comma style
        ("{a: 1, a: 2, b: 3}", {"a": 2, "b": 3}),  # the last value wins
        (
            "{a: true, b: false, c: null, d: undefined}",
            {"a": True, "b": False, "c": None, "d": None},
        ),
        (
            "{a: -1, b: +2, c: - 3, d: .5, e: 5., f: 1e3, g: -1.5E-3}",
            {
                "a": -1,
                "b": 2,
                "c": -3,
                "d": 0.5,
                "e": 5.0,
                "f": 1000.0,
                "g": -0.0015,
            },
        ),
        (
            "{a: 0x1F, b: 0o17, c: 0b101, d: 0755, e: 08}",
            {"a": 31, "b": 15, "c": 5, "d": 493, "e": 8},
        ),
        ("{a: Infinity, b: -Infinity}", {"a": math.inf, "b": -math.inf}),
        ("{1: 'x', 1.50: 'y', 0x10: 'z'}", {"1": "x", "1.5": "y", "16": "z"}),
        ("{a: {b: {c: [[], {}]}}}", {"a": {"b": {"c": [[], {}]}}}),
        ("{a: ([1])}", {"a": [1]}),
        # comments anywhere
        ("// top\n{ /* k */ a /* c */ : /* v */ 1 // end\n}", {"a": 1}),
        ("{a: 1 /* } */}", {"a": 1}),
        ("{a: 'http://x' /* not a comment inside the string */}", {"a": "http://x"}),
        # strings and escapes
        (r"{a: 'it\'s', b: " + '"say \\"hi\\""}', {"a": "it's", "b": 'say "hi"'}),
        (r"{a: '\n\t\r\b\f\v\0\\\/'}", {"a": "\n\t\r\b\f\v\0\\/"}),
        (r"{a: '\x41\u0042\u{1F600}\uD83D\uDE00\101\7'}", {"a": "AB\U0001f600\U0001f600A\x07"}),
        ("{a: 'one \\\ntwo', b: 'x\\\r\ny'}", {"a": "one two", "b": "xy"}),
        ("{a: '\\q', b: 'caf\u00e9', c: '\u2028'}", {"a": "q", "b": "caf\u00e9", "c": "\u2028"}),
        # regular-expression literals, as the backends document them
        (
            r"{a: [/^my\.metrics/, /b[/]c/gi, /x\/y/]}",
            {
                "a": [JsRegExp(r"^my\.metrics"), JsRegExp("b[/]c", "gi"), JsRegExp(r"x\/y")],
            },
        ),
    ],
)
def test_reads_literals(text: str, expected: dict[str, Any]) -> None:
    assert parse_config(text) == expected


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("", "1:1", "expected a value, found end of file"),
        ("[1, 2]", "1:1", "must be an object literal"),
        ("{a: 1", "1:6", "expected ',' or '}'"),
        ("{\n  a: 1\n  b: 2\n}", "3:3", "expected ',' or '}' after a value, found 'b'"),
        ("{a: require('os').hostname()}", "1:5", "unsupported JavaScript expression"),
        ("{a: process.env.TOKEN}", "1:5", "starting with 'process'"),
        ("{a: 'x' + 'y'}", "1:9", "found '+'"),
        ("{a: 1} {b: 2}", "1:8", "after the configuration object"),
        ("config = {a: 1}", "1:1", "starting with 'config'"),
        ("{a: [1,,2]}", "1:8", "empty array element"),
        ("{a: 'oops\n'}", "1:5", "unterminated string"),
        ("{a: 'oops}", "1:5", "unterminated string"),
        ("{a: 1 /* never closed", "1:7", "unterminated /* comment"),
        ("{a: /abc}", "1:5", "unterminated regular expression"),
        ("{a: /x/q}", "1:5", "malformed regular expression"),
        ("{a: 0x}", "1:5", "malformed number"),
        ("{a: 1e}", "1:5", "malformed exponent"),
        ("{a: 12abc}", "1:5", "malformed number"),
        ("{a: -}", "1:6", "expected a number after '-'"),
        ("{a: '\\x4'}", "1:8", "hexadecimal digits"),
        ("{a: '\\u{110000}'}", "1:8", "beyond U+10FFFF"),
        ("{[a]: 1}", "1:2", "expected a key"),
        ("{a 1}", "1:4", "expected ':'"),
        ("{a: `template`}", "1:5", "expected a value"),
        ("{a: " + "[" * 70 + "]" * 70 + "}", "1:68", "nested more than 64 levels"),
    ],
)
def test_refuses_with_line_and_column(text: str, where: str, reason: str) -> None:
    with pytest.raises(EtsyConfigError) as caught:
        parse_config(text)
    line, column = (int(part) for part in where.split(":"))
    assert (caught.value.line, caught.value.column) == (line, column)
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"{where}: ")
    assert isinstance(caught.value, ValueError)  # (the CLI reports it: test_migration.py)


SECRET = "0123abcdef9876fedcba"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("{appoptics: {token: abcdef0123456789fedcba}}", "1:21"),  # unquoted: an identifier
        (f"{{appoptics: {{token: {SECRET}}}}}", "1:21"),  # unquoted: a malformed number
        (f"{{librato: {{email: 'a@b', token: 0x{SECRET}zz}}}}", "1:33"),
        (f"{{datadog: {{apiKey: /{SECRET}/{SECRET}}}}}", "1:20"),  # regexp flags
        (f"{{graphite: {{password: {{nested: [{SECRET}]}}}}}}", "1:33"),
    ],
)
def test_an_error_inside_a_secret_never_shows_its_text(text: str, where: str) -> None:
    with pytest.raises(EtsyConfigError) as caught:
        parse_config(text)
    message = str(caught.value)
    assert message.startswith(f"{where}: ")
    assert "abcdef" not in message and SECRET[:4] not in message
    assert "not shown" in message


def test_an_api_url_holding_the_token_is_not_quoted() -> None:
    with pytest.raises(EtsyConfigError) as caught:
        translate(parse_config(f"{{appoptics: {{api: 'api://{SECRET}:@api.appoptics.com'}}}}"))
    assert SECRET not in str(caught.value)


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.js"
    path.write_text("{\n  port: 8125\n  flushInterval: 1000\n}\n")
    with pytest.raises(EtsyConfigError, match=rf"^{re.escape(str(path))}:3:3: expected"):
        load_config(path)
    with pytest.raises(EtsyConfigError, match="cannot read"):
        load_config(tmp_path / "missing.js")
    path.write_bytes(b"{a: '\xff'}")
    with pytest.raises(EtsyConfigError, match="not UTF-8"):
        load_config(path)


# --- the reader: Hypothesis round trip and fuzz ---------------------------------------------

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
)
VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
CONFIGS = st.dictionaries(st.text(max_size=8), VALUES, max_size=6)
GAP = st.lists(
    st.sampled_from(
        [" ", "  ", "\n", "\t", "\r\n", "\xa0", "/* c */", "/**/", "// note\n", "/* a\n b */"]
    ),
    max_size=2,
).map("".join)

# Characters a backslash turns into something else (or into nothing: line continuations).
IMPORTANT_AFTER_BACKSLASH = frozenset("bfnrtvxu01234567\n\r\u2028\u2029")
Draw = Callable[[st.SearchStrategy[Any]], Any]


class Writer:
    """Writes a value as a JavaScript literal, drawing every formatting choice."""

    def __init__(self, draw: Draw) -> None:
        self.draw = draw

    def gap(self) -> str:
        return str(self.draw(GAP))

    def value(self, value: Any) -> str:
        if value is None or isinstance(value, bool):
            words = {None: ["null", "undefined"], True: ["true"], False: ["false"]}
            return str(self.draw(st.sampled_from(words[value])))
        if isinstance(value, int | float):
            return self.integer(value) if isinstance(value, int) else self.number(value)
        if isinstance(value, str):
            return self.string(value)
        if isinstance(value, list):
            return self.members("[", [self.value(item) for item in value], "]")
        return self.members(
            "{",
            [f"{self.key(k)}{self.gap()}:{self.gap()}{self.value(v)}" for k, v in value.items()],
            "}",
        )

    def members(self, opening: str, items: list[str], closing: str) -> str:
        inner = ",".join(f"{self.gap()}{item}{self.gap()}" for item in items)
        trailing = "," if items and self.draw(st.booleans()) else ""
        return f"{opening}{inner}{trailing}{self.gap()}{closing}"

    def key(self, key: str) -> str:
        if is_identifier(key) and self.draw(st.booleans()):
            return key
        if key.isdigit() and key.isascii() and str(int(key)) == key and self.draw(st.booleans()):
            return key  # a numeric key, written as a number
        return self.string(key)

    def integer(self, value: int) -> str:
        sign = "-" if value < 0 else str(self.draw(st.sampled_from(["", "+"])))
        form = self.draw(st.sampled_from(["decimal", "hex", "octal"]))
        magnitude = abs(value)
        if form == "hex":
            return f"{sign}0x{magnitude:x}"
        if form == "octal" and magnitude:
            return f"{sign}0{magnitude:o}"  # sloppy-mode legacy octal
        return f"{sign}{magnitude}"

    def number(self, value: float) -> str:
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        text = repr(value)
        if text.startswith("0.") and self.draw(st.booleans()):
            text = text[1:]  # .5
        return text

    def string(self, text: str) -> str:
        quote = str(self.draw(st.sampled_from(["'", '"'])))
        return quote + "".join(self.char(c, quote) for c in text) + quote

    def char(self, char: str, quote: str) -> str:
        code = ord(char)
        forms = [] if char in (quote, "\\", "\n", "\r") else [char]
        forms.append(f"\\u{{{code:x}}}")
        if code <= 0xFFFF:
            forms.append(f"\\u{code:04x}")
        else:
            high, low = divmod(code - 0x10000, 0x400)
            forms.append(f"\\u{0xD800 + high:04X}\\u{0xDC00 + low:04X}")
        if code < 256:
            forms += [f"\\x{code:02x}", f"\\{code:03o}"]
        if char not in IMPORTANT_AFTER_BACKSLASH:
            forms.append("\\" + char)  # an identity escape: \' \" \\ \q
        simple = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r"}
        if char in simple:
            forms.append(simple[char])
        return str(self.draw(st.sampled_from(forms)))


def written(draw: Draw, config: dict[str, Any]) -> str:
    writer = Writer(draw)
    text = writer.gap() + writer.value(config) + writer.gap()
    if draw(st.booleans()):
        text = f"({text}){writer.gap()};"
    return text


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same kinds (True is not 1 here)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None)
@given(config=CONFIGS, data=st.data())
def test_any_value_reads_back_however_it_is_written(config: dict[str, Any], data: Any) -> None:
    text = written(data.draw, config)
    assert same(parse_config(text), config), text


def _only_etsy_errors(text: str) -> None:
    with contextlib.suppress(EtsyConfigError):
        parse_config(text)


@settings(max_examples=500)
@given(st.text())
def test_arbitrary_text_raises_only_etsy_errors(text: str) -> None:
    _only_etsy_errors(text)


@settings(max_examples=500)
@given(st.text(alphabet="{}[]()'\"/\\*,:;.+-0123456789eExXuU\n abc_$"))
def test_literal_shaped_text_raises_only_etsy_errors(text: str) -> None:
    _only_etsy_errors(text)


@settings(max_examples=150, deadline=None)
@given(config=CONFIGS, data=st.data())
def test_damaged_literals_raise_only_etsy_errors(config: dict[str, Any], data: Any) -> None:
    text = written(data.draw, config)
    cut = data.draw(st.integers(0, len(text)))
    junk = data.draw(st.text(alphabet="{}[]'\"/\\*,:.-x0\n", max_size=3))
    _only_etsy_errors(text[:cut] + junk + text[cut + data.draw(st.integers(0, 3)) :])


# --- the sample files -----------------------------------------------------------------------


def expected_example() -> Translation:
    return Translation(
        percentiles=(90.0, 95.0, 99.9),
        backend="appoptics",
        token="0123456789abcdef" * 4,
        exclude_metrics=(INTERNAL_METRICS,),
    )


def expected_appoptics() -> Translation:
    return Translation(
        flush_interval=60,
        percentiles=(95.0,),
        backend="appoptics",
        token=TOKEN,
        tags={"os": "ubuntu", "role": "web", "tier": "2", "host": "web-1.example.com"},
        batch_size=300,
        request_timeout=8.0,
        delete_idle=DeleteIdle(counters=True, gauges=False, timers=True, sets=True),
        key_name_sanitize=False,
        global_prefix="prod",
        include_metrics=(r"^my\.included\.metrics", "^my.specifically.included.metric$"),
        exclude_metrics=(r"^my\.excluded\.", "debug$", "(?i)NOISY", INTERNAL_METRICS),
        source_regex=r"^(web-\d+)\.",
        always_suffix_percentile=True,
    )


def expected_librato() -> Translation:
    return Translation(
        backend="librato",
        api_url=LIBRATO_API_URL,
        token=TOKEN,
        tags={"region": "us-east-1", "source": "statsd-1"},  # tags.host: see test_host_tag
        include_metrics=(r"^api\.",),
        source_regex=r"^([^.]+)\.source\.",
        unsupported=(
            "librato.skipInternalMetrics (etsy's statsd.* metrics do not exist here)",
            "librato.email (statsd-ao authenticates with the token alone, as AppOptics does)",
        ),
    )


def expected_ipv6() -> Translation:
    return Translation(
        udp="[::1]:9125",
        flush_interval=2,
        backend="appoptics",
        token="abc",
        host_tag=False,
        exclude_metrics=(INTERNAL_METRICS,),
        admin="[::1]:9126",
        health_status="down",
        unsupported=("flushInterval=1500 (rounded to 2 s)",),
    )


def expected_unsupported() -> Translation:
    return Translation(
        backend="appoptics",
        token="abc",
        exclude_metrics=(INTERNAL_METRICS,),
        unsupported=(
            "servers[1] (statsd-ao listens on one UDP address)",
            "percentThreshold -10 (no top percentiles)",
            "graphitePort",
            "graphiteHost",
            "graphite",
            "repeater",
            "repeaterProtocol",
            "console",
            "dumpMessages",
            "title",
            "histogram",
            "keyFlush",
            "backends: ./backends/graphite",
            "backends: ./backends/console",
            "backends: ./backends/repeater",
            "librato (statsd-ao posts to one API; the appoptics section is used)",
            "appoptics.retryDelaySecs (statsd-ao retries on its own schedule)",
            "appoptics.proxy",
            "appoptics.countersAsGauges (counters are sent per interval)",
        ),
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("exampleConfig.js", expected_example),
        ("appoptics.js", expected_appoptics),
        ("librato.js", expected_librato),
        ("ipv6.js", expected_ipv6),
        ("unsupported.js", expected_unsupported),
    ],
)
def test_sample_files(name: str, expected: Callable[[], Translation]) -> None:
    assert translate(load_config(DATA / name)) == expected()


def test_the_token_stays_out_of_repr() -> None:
    translation = translate(load_config(DATA / "appoptics.js"))
    assert TOKEN not in repr(translation)


# --- what each option means -----------------------------------------------------------------


def effective(text: str) -> Translation:
    return translate(parse_config(text))


@pytest.mark.parametrize(
    ("text", "udp"),
    [
        ("{}", "0.0.0.0:8125"),
        ("{port: 9125}", "0.0.0.0:9125"),
        ("{port: '9125'}", "0.0.0.0:9125"),
        ("{port: 0}", "0.0.0.0:8125"),  # port || 8125
        ("{address: '127.0.0.1'}", "127.0.0.1:8125"),
        ("{address_ipv6: true}", "[::]:8125"),
        ("{address_ipv6: true, address: 'fe80::1', port: 1}", "[fe80::1]:1"),
        ("{servers: [{address: '10.0.0.1', port: 9000}], port: 1}", "10.0.0.1:9000"),
        ("{servers: [{server: './servers/tcp'}, {server: './servers/udp', port: 2}]}", "0.0.0.0:2"),
    ],
)
def test_udp_address(text: str, udp: str) -> None:
    assert effective(text).udp == udp


@pytest.mark.parametrize(
    ("text", "seconds", "note"),
    [
        ("{}", 10, None),
        ("{flushInterval: 60000}", 60, None),
        ("{flushInterval: '30000'}", 30, None),
        ("{flushInterval: 0}", 10, None),  # flushInterval || 10000
        ("{flushInterval: 1000}", 1, None),
        ("{flushInterval: 1499}", 1, "flushInterval=1499 (rounded to 1 s)"),
        ("{flushInterval: 2500}", 3, "flushInterval=2500 (rounded to 3 s)"),
    ],
)
def test_flush_interval_in_whole_seconds(text: str, seconds: int, note: str | None) -> None:
    translation = effective(text)
    assert translation.flush_interval == seconds
    assert translation.unsupported == ((note,) if note else ())


@pytest.mark.parametrize("text", ["{flushInterval: 500}", "{flushInterval: -1}"])
def test_sub_second_flush_interval_is_refused(text: str) -> None:
    with pytest.raises(EtsyConfigError, match=r"flushInterval: .* below statsd-ao's shortest"):
        effective(text)


@pytest.mark.parametrize(
    ("text", "percentiles", "notes"),
    [
        ("{}", (90.0,), ()),
        ("{percentThreshold: 95}", (95.0,), ()),
        ("{percentThreshold: [99.9, 50, 99.9, '75']}", (50.0, 75.0, 99.9), ()),
        ("{percentThreshold: []}", (), ()),
        ("{percentThreshold: 0}", (90.0,), ()),
        ("{percentThreshold: [0, 100]}", (100.0,), ()),
        (
            "{percentThreshold: [-10, 101]}",
            (),
            (
                "percentThreshold -10 (no top percentiles)",
                "percentThreshold 101 (above 100)",
            ),
        ),
    ],
)
def test_percentiles(text: str, percentiles: tuple[float, ...], notes: tuple[str, ...]) -> None:
    translation = effective(text)
    assert translation.percentiles == percentiles
    assert translation.unsupported == notes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", DeleteIdle()),
        ("{deleteIdleStats: true}", DeleteIdle(True, True, True, True)),
        ("{deleteIdleStats: 1, deleteGauges: false}", DeleteIdle(True, False, True, True)),
        ("{deleteCounters: true, deleteSets: 'yes'}", DeleteIdle(True, False, False, True)),
        ("{deleteIdleStats: false, deleteTimers: true}", DeleteIdle(False, False, True, False)),
    ],
)
def test_idle_stats(text: str, expected: DeleteIdle) -> None:
    assert effective(text).delete_idle == expected


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("{prefixStats: 'statsd.one'}", "prefix_stats", "statsd.one"),
        ("{keyNameSanitize: false}", "key_name_sanitize", False),
        ("{keyNameSanitize: null}", "key_name_sanitize", True),
        ("{mgmt_port: 8126}", "admin", "0.0.0.0:8126"),
        ("{mgmt_address: '127.0.0.1'}", "admin", "127.0.0.1:8126"),
        ("{healthStatus: 'DOWN'}", "health_status", "down"),
        ("{appoptics: {}}", "api_url", APPOPTICS_API_URL),
        ("{librato: {}}", "api_url", LIBRATO_API_URL),
        (
            "{appoptics: {api: 'http://localhost:8080/v1/ignored'}}",
            "api_url",
            "http://localhost:8080",
        ),
        ("{appoptics: {token: ''}}", "token", None),
        ("{appoptics: {batchSize: 2000}}", "batch_size", 1000),
        ("{appoptics: {batchSize: 0}}", "batch_size", 500),
        ("{appoptics: {postTimeoutSecs: 2.5}}", "request_timeout", 2.5),
        ("{appoptics: {globalPrefix: ''}}", "global_prefix", ""),
        ("{appoptics: {alwaysSuffixPercentile: 1}}", "always_suffix_percentile", True),
        ("{appoptics: {includeMetrics: 'not a list'}}", "include_metrics", ()),
        (
            "{appoptics: {includeMetrics: [/(?<a>x)\\k<a>/m]}}",
            "include_metrics",
            ("(?m)(?P<a>x)(?P=a)",),
        ),
        ("{appoptics: {excludeMetrics: ['/x/']}}", "exclude_metrics", ("x", INTERNAL_METRICS)),
        ("{appoptics: {skipInternalMetrics: null}}", "exclude_metrics", (INTERNAL_METRICS,)),
        ("{appoptics: {sourceRegex: '^(\\\\w+)-'}}", "source_regex", r"^(\w+)-"),
    ],
)
def test_options(text: str, field: str, value: object) -> None:
    assert getattr(effective(text), field) == value


@pytest.mark.parametrize(
    ("section", "tags", "host_tag"),
    [
        # absent: this machine's name, even over tags.host (both backends do this)
        ("appoptics: {tags: {host: 'h', a: 'b'}}", {"a": "b"}, True),
        ("librato: {tags: {host: 'h'}}", {}, True),
        # set: it wins over tags.host
        ("appoptics: {host: 'web-1', tags: {host: 'h'}}", {"host": "web-1"}, True),
        # falsy: no host tag of its own; tags.host, if any, stays
        ("appoptics: {host: false}", {}, False),
        ("appoptics: {host: null, tags: {host: 'h'}}", {"host": "h"}, False),
        ("librato: {host: ''}", {}, False),
        # librato reads a null host as "absent"
        ("librato: {host: null, tags: {host: 'h'}}", {}, True),
        # source becomes a tag; numbers and booleans are stringified as JavaScript does
        (
            "librato: {source: 'db', tags: {n: 1.0, ok: true, gone: null}}",
            {
                "source": "db",
                "n": "1",
                "ok": "true",
            },
            True,
        ),
    ],
)
def test_host_tag(section: str, tags: dict[str, str], host_tag: bool) -> None:
    translation = effective("{" + section + "}")
    assert dict(translation.tags) == tags
    assert translation.host_tag is host_tag


@pytest.mark.parametrize(
    ("text", "backend", "notes"),
    [
        ("{}", None, ()),
        ("{backends: ['statsd-appoptics-backend']}", None, ()),
        ("{backends: ['./backends/console']}", None, ("backends: ./backends/console",)),
        (
            "{librato: {}, appoptics: {}}",
            "appoptics",
            ("librato (statsd-ao posts to one API; the appoptics section is used)",),
        ),
        (
            "{backends: ['statsd-librato-backend'], librato: {}, appoptics: {}}",
            "librato",
            ("appoptics (statsd-ao posts to one API; the librato section is used)",),
        ),
    ],
)
def test_backend_choice(text: str, backend: str | None, notes: tuple[str, ...]) -> None:
    translation = effective(text)
    assert translation.backend == backend
    assert translation.unsupported == notes


@pytest.mark.parametrize(
    ("text", "notes"),
    [
        # options that merely spell out what statsd-ao does anyway are not reported
        ("{debug: false, dumpMessages: 0, automaticConfigReload: false, histogram: []}", ()),
        ("{gaugesMaxTTL: 1, appoptics: {writeToLegacy: false, mergeGlobalTags: true}}", ()),
        ("{appoptics: {snapTime: 10}}", ()),
        ("{appoptics: {countersAsGauges: true, skipInternalMetrics: true}}", ()),
        # the others are, once each
        (
            "{debug: true, automaticConfigReload: true, gaugesMaxTTL: 5}",
            (
                "debug",
                "automaticConfigReload",
                "gaugesMaxTTL",
            ),
        ),
        ("{server: './servers/tcp'}", ("server=./servers/tcp (statsd-ao listens on UDP)",)),
        (
            "{appoptics: {snapTime: 60, mergeGlobalTags: false, writeToLegacy: true}}",
            (
                "appoptics.writeToLegacy (the legacy source-based API is not used)",
                "appoptics.mergeGlobalTags (global tags are always merged)",
                "appoptics.snapTime (times snap to the flush interval)",
            ),
        ),
        ("{healthStatus: 'sideways'}", ("healthStatus=sideways (expected up or down)",)),
    ],
)
def test_unsupported_options_are_named(text: str, notes: tuple[str, ...]) -> None:
    assert effective(text).unsupported == notes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{port: 70000}", "port: expected a port 1-65535"),
        ("{port: 'eighty'}", "port: expected a number"),
        ("{port: 81.5}", "port: expected a port"),
        ("{mgmt_port: -1}", "mgmt_port: expected a port"),
        ("{servers: {}}", "servers: expected a list of objects"),
        ("{percentThreshold: ['x']}", "percentThreshold: expected a number"),
        ("{appoptics: 'token'}", "appoptics: expected an object"),
        ("{appoptics: {token: 12}}", "appoptics.token: expected a string"),
        ("{appoptics: {api: 'api.appoptics.com'}}", "appoptics.api: expected an http"),
        ("{appoptics: {tags: ['a']}}", "appoptics.tags: expected an object"),
        ("{appoptics: {tags: {a: {b: 1}}}}", "appoptics.tags.a: expected a string"),
        ("{appoptics: {batchSize: 2.5}}", "appoptics.batchSize: expected a whole number"),
        ("{appoptics: {postTimeoutSecs: -1}}", "appoptics.postTimeoutSecs: expected a positive"),
        (
            "{appoptics: {includeMetrics: [1]}}",
            r"appoptics.includeMetrics\[0\]: expected a regular",
        ),
        ("{appoptics: {excludeMetrics: ['(']}}", r"excludeMetrics\[0\]: \( is not a usable"),
        ("{librato: {sourceRegex: /(?<=a+)b/}}", "librato.sourceRegex: .* look-behind"),
    ],
)
def test_meaningless_values_are_refused(text: str, message: str) -> None:
    with pytest.raises(EtsyConfigError, match=message):
        effective(text)


ETSY_KEYS = [
    "port",
    "address",
    "address_ipv6",
    "server",
    "servers",
    "flushInterval",
    "percentThreshold",
    "deleteIdleStats",
    "deleteGauges",
    "prefixStats",
    "keyNameSanitize",
    "backends",
    "mgmt_port",
    "mgmt_address",
    "healthStatus",
    "debug",
    "histogram",
]
SECTION_KEYS = [
    "token",
    "api",
    "tags",
    "host",
    "source",
    "globalPrefix",
    "batchSize",
    "includeMetrics",
    "excludeMetrics",
    "sourceRegex",
    "alwaysSuffixPercentile",
    "postTimeoutSecs",
    "skipInternalMetrics",
    "countersAsGauges",
    "mergeGlobalTags",
    "snapTime",
    "email",
]
ODD_VALUES = VALUES | st.builds(JsRegExp, st.sampled_from(["x", "(", "^(a)"]), st.just(""))


@settings(max_examples=500, deadline=None)
@given(
    top=st.dictionaries(st.sampled_from(ETSY_KEYS), ODD_VALUES, max_size=5),
    section=st.dictionaries(st.sampled_from(SECTION_KEYS), ODD_VALUES, max_size=6),
    name=st.sampled_from(["appoptics", "librato"]),
)
def test_translate_raises_only_etsy_errors(
    top: dict[str, Any], section: dict[str, Any], name: str
) -> None:
    try:
        translation = translate({**top, name: section})
    except EtsyConfigError:
        return
    assert translation.flush_interval >= 1
    assert 1 <= translation.batch_size <= 1000
    assert all(0 < p <= 100 for p in translation.percentiles)
    for pattern in (*translation.include_metrics, *translation.exclude_metrics):
        re.compile(pattern)

"""Names and tags fitted to the AppOptics rules; global tags merged (`statsd_ao.core.sanitize`)."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.measurements import Converter
from statsd_ao.core.sanitize import MAX_TAGS, Naming, fit_name, fit_tag

NAME_RE = re.compile(r"[A-Za-z0-9.:_-]{1,255}")
TAG_NAME_RE = re.compile(r"[-.:_A-Za-z0-9]{1,64}")
TAG_VALUE_RE = re.compile(r"[-.:_?\\/A-Za-z0-9 ]{1,255}")

LONG = "a" * 255


# --- metric names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fitted"),
    [
        ("api.requests", "api.requests"),
        ("A.b-c_d:e", "A.b-c_d:e"),
        ("my metric", "my_metric"),
        ("a/b", "a_b"),
        ("a\\b", "a_b"),
        ("a#b", "a_b"),
        ("a,b=c", "a_b_c"),
        ("caf\u00e9", "caf_"),
        ("\ufffd\ufffd", "__"),
        ("x" * 255, "x" * 255),
    ],
)
def test_invalid_name_characters_are_replaced(name: str, fitted: str) -> None:
    assert fit_name(name) == fitted


@pytest.mark.parametrize("length", [256, 300, 1000, 10_000])
def test_long_names_are_shortened_to_a_valid_name(length: int) -> None:
    fitted = fit_name("n" * length)
    assert NAME_RE.fullmatch(fitted)
    assert fitted.startswith("n" * 200)


def test_long_names_sharing_a_prefix_stay_distinct() -> None:
    first, second = fit_name(LONG + "first"), fit_name(LONG + "second")
    assert first != second
    assert len(first) <= 255
    assert len(second) <= 255


def test_long_names_differing_only_in_an_invalid_character_stay_distinct() -> None:
    assert fit_name(LONG + "\u00e9") != fit_name(LONG + "\u00e8")


@pytest.mark.parametrize(
    ("name", "kept", "digest"),
    [
        # The digest is blake2b-64 of the full name's UTF-8, its first 10 hex digits: the
        # same in every process and every run (Python's hash() would change per process).
        ("service." + "x" * 300, "service." + "x" * 236, "9d910927a2"),
        ("svc/" + "\u00e9" * 260, "svc_" + "_" * 240, "c1be23e268"),
    ],
)
def test_a_long_name_is_cut_to_its_exact_stable_form(name: str, kept: str, digest: str) -> None:
    assert fit_name(name) == kept + "." + digest
    assert len(kept + "." + digest) == 255


def test_a_long_timer_and_its_percentile_get_their_exact_stable_names() -> None:
    aggregator = Aggregator(Naming({"host": "h"}))
    aggregator.ingest(b"service." + b"x" * 300 + b":1|ms")
    snapshot = aggregator.swap()
    names = sorted(m["name"] for m in Converter([90]).convert(list(snapshot.series.items()), 0, 10))
    prefix = "service." + "x" * 236 + "."
    assert names == [prefix + "9d910927a2", prefix + "ed87825386"]


def test_shortening_is_deterministic() -> None:
    assert fit_name(LONG + "tail") == fit_name(LONG + "tail")


@pytest.mark.parametrize("base", [LONG, "b" * 253, "c" * 300])
def test_percentile_suffixes_on_long_names_stay_distinct_and_short(base: str) -> None:
    fitted_base = fit_name(base)
    names = [fitted_base] + [fit_name(fitted_base + s) for s in (".p50", ".p90", ".p99", ".p99.9")]
    assert len(set(names)) == len(names)
    for name in names:
        assert NAME_RE.fullmatch(name), name


@settings(max_examples=300)
@given(st.text(min_size=1, max_size=400))
def test_fit_name_always_gives_a_valid_name(name: str) -> None:
    assert NAME_RE.fullmatch(fit_name(name))


@settings(max_examples=200)
@given(st.from_regex(NAME_RE, fullmatch=True))
def test_valid_names_are_unchanged(name: str) -> None:
    assert fit_name(name) == name


@settings(max_examples=300)
@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_long_names_never_collide(tail_a: str, tail_b: str) -> None:
    if tail_a != tail_b:
        assert fit_name(LONG + tail_a) != fit_name(LONG + tail_b)


# --- tags -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "fitted"),
    [
        ("env", "prod", ("env", "prod")),
        ("Env", "PROD", ("env", "prod")),
        ("a b", "c d", ("a_b", "c d")),
        ("a/b", "x", ("a_b", "x")),
        ("path", "/A/b?c\\d", ("path", "/a/b?c\\d")),
        ("k", "x.y:z-w_v", ("k", "x.y:z-w_v")),
        ("k", "caf\u00e9", ("k", "caf_")),
        ("k", "a#b,c=d|e", ("k", "a_b_c_d_e")),
        (" k ", "v", ("k", "v")),
        ("k", "  v  ", ("k", "v")),
        ("K\u212a", "v", ("k_", "v")),
        ("k" * 100, "v", ("k" * 64, "v")),
        ("k", "V" * 300, ("k", "v" * 255)),
    ],
)
def test_fit_tag(key: str, value: str, fitted: tuple[str, str]) -> None:
    assert fit_tag(key, value) == fitted


@pytest.mark.parametrize(("key", "value"), [("", "v"), ("   ", "v"), ("k", ""), ("k", "   ")])
def test_tags_with_nothing_left_are_dropped(key: str, value: str) -> None:
    assert fit_tag(key, value) is None


@settings(max_examples=300)
@given(st.text(max_size=100), st.text(max_size=300))
def test_fit_tag_gives_valid_lowercase_tags(key: str, value: str) -> None:
    fitted = fit_tag(key, value)
    if fitted is None:
        return
    tag_key, tag_value = fitted
    assert TAG_NAME_RE.fullmatch(tag_key)
    assert TAG_VALUE_RE.fullmatch(tag_value)
    assert tag_key == tag_key.lower()
    assert tag_value == tag_value.lower()


# --- Naming: series identity ----------------------------------------------------------------


def test_naming_needs_at_least_one_valid_global_tag() -> None:
    with pytest.raises(ValueError):
        Naming({})
    with pytest.raises(ValueError):
        Naming({"": "x", "y": "  "})


def test_global_tags_are_merged_into_every_series() -> None:
    naming = Naming({"host": "web-1"})
    assert naming.series("x", []) == ("x", (("host", "web-1"),))
    assert naming.series("x", [("env", "prod")]) == ("x", (("env", "prod"), ("host", "web-1")))


def test_global_tags_are_sanitized() -> None:
    assert Naming({"Host": "Web 1"}).series("x", []) == ("x", (("host", "web 1"),))


@pytest.mark.parametrize("own_key", ["host", "HOST", " host"])
def test_the_metric_tag_wins_over_a_global_tag(own_key: str) -> None:
    naming = Naming({"host": "web-1", "pod": "p"})
    _, tags = naming.series("x", [(own_key, "other")])
    assert tags == (("host", "other"), ("pod", "p"))


def test_tag_order_does_not_change_identity() -> None:
    naming = Naming({"host": "h"})
    assert naming.series("x", [("b", "2"), ("a", "1")]) == naming.series(
        "x", [("a", "1"), ("b", "2")]
    )


def test_tags_the_api_treats_as_one_are_one_series() -> None:
    naming = Naming({"host": "h"})
    assert naming.series("x", [("Env", "Prod")]) == naming.series("x", [("env", "prod")])


def test_series_name_is_fitted() -> None:
    assert Naming({"host": "h"}).series("my metric", [])[0] == "my_metric"


def test_invalid_tags_are_dropped_and_counted() -> None:
    naming = Naming({"host": "h"})
    _, tags = naming.series("x", [("", "v"), ("k", " "), ("ok", "yes")])
    assert tags == (("host", "h"), ("ok", "yes"))
    assert naming.tags_dropped == 2


def own_tags(count: int) -> list[tuple[str, str]]:
    return [(f"t{i:02d}", str(i)) for i in range(count)]


def test_at_most_fifty_tags_globals_first_then_sorted_own_tags() -> None:
    naming = Naming({"host": "h", "pod": "p"})
    _, tags = naming.series("x", own_tags(60))
    assert len(tags) == MAX_TAGS
    keys = dict(tags)
    assert keys["host"] == "h"
    assert keys["pod"] == "p"
    assert sorted(k for k in keys if k.startswith("t")) == [f"t{i:02d}" for i in range(48)]
    assert naming.tags_dropped == 12


def test_tag_cap_is_deterministic_whatever_the_order() -> None:
    naming = Naming({"host": "h"})
    tags = own_tags(80)
    expected = naming.series("x", tags)
    for seed in range(5):
        shuffled = tags[:]
        random.Random(seed).shuffle(shuffled)
        assert naming.series("x", shuffled) == expected


def test_tag_cap_keeps_the_metric_value_of_a_clashing_global() -> None:
    naming = Naming({"host": "h"})
    _, tags = naming.series("x", [("host", "mine"), *own_tags(60)])
    assert len(tags) == MAX_TAGS
    assert dict(tags)["host"] == "mine"


def test_more_than_fifty_global_tags_never_yield_more_than_fifty_tags() -> None:
    """A config with > 50 global tags must be refused or capped, never posted as is."""
    global_tags = {f"g{i:02d}": "v" for i in range(51)}
    try:
        naming = Naming(global_tags)
    except ValueError:
        return
    _, tags = naming.series("x", [("own", "tag")])
    assert len(tags) <= MAX_TAGS


@settings(max_examples=200)
@given(
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=5),
    st.lists(st.tuples(st.text(max_size=70), st.text(max_size=260)), max_size=70),
)
def test_series_tags_always_satisfy_the_api(
    global_tags: dict[str, str], tags: list[tuple[str, str]]
) -> None:
    naming = Naming({**global_tags, "host": "h"})
    _, series_tags = naming.series("x", tags)
    assert 1 <= len(series_tags) <= MAX_TAGS
    assert list(series_tags) == sorted(series_tags)
    assert len({k for k, _ in series_tags}) == len(series_tags)
    for key, value in series_tags:
        assert TAG_NAME_RE.fullmatch(key)
        assert TAG_VALUE_RE.fullmatch(value)
        assert key == key.lower()
        assert value == value.lower()
    for key in naming.global_tags:
        assert key in dict(series_tags)

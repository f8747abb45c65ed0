"""DogStatsD events as AppOptics annotation events (``POST /v1/annotations/<stream>``).

The event's title and text become the annotation's title and description; its priority,
alert type and tags are appended to the description (annotations have no tags); its host
(``h:``) is the source, else the proxy's host.  Every event goes to one stream, named by a
setting, except an annotation posted to the API intake, which keeps its own stream, end time
and links (`stream_of`).
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from statsd_ao.core.events import Event
from statsd_ao.core.events import Link as EventLink
from statsd_ao.core.sanitize import fit_name

DEFAULT_STREAM = "statsd"
# The reference gives no limits; these keep one noisy client from posting megabytes.
MAX_TITLE = 255
MAX_DESCRIPTION = 2000


class Link(TypedDict):
    rel: str
    href: str
    label: NotRequired[str]


class Annotation(TypedDict):
    title: str
    start_time: int
    source: str
    description: NotRequired[str]
    end_time: NotRequired[int]
    links: NotRequired[list[Link]]


def stream_name(name: str) -> str:
    """A stream name made of the characters metric names allow."""
    return fit_name(name.strip()) or DEFAULT_STREAM


def stream_of(event: Event, default: str) -> str:
    """The stream an event goes to: its own (posted to the API intake) or ``default``."""
    return event.stream or default


def to_annotation(event: Event, default_source: str, arrived: int) -> Annotation:
    """The annotation for ``event``; ``arrived`` is used when it carries no ``d:`` time."""
    annotation = Annotation(
        title=event.title[:MAX_TITLE] or "(untitled event)",
        start_time=event.timestamp if event.timestamp is not None else arrived,
        source=event.host or default_source,
    )
    description = _description(event)
    if description:
        annotation["description"] = description[:MAX_DESCRIPTION]
    if event.end_time is not None:
        annotation["end_time"] = event.end_time
    if event.links:
        annotation["links"] = [_link(link) for link in event.links]
    return annotation


def _link(link: EventLink) -> Link:
    out = Link(rel=link.rel, href=link.href)
    if link.label is not None:
        out["label"] = link.label
    return out


def _description(event: Event) -> str:
    details = [
        f"{label}: {value}"
        for label, value in (
            ("alert", event.alert_type),
            ("priority", event.priority),
            ("source type", event.source),
        )
        if value
    ]
    if event.tags:
        details.append("tags: " + ", ".join(f"{k}:{v}" for k, v in event.tags))
    suffix = f" [{'; '.join(details)}]" if details else ""
    return (event.text + suffix).strip()

"""The incident timeline as a picture: phases as bands and key events as markers on a time axis (plain SVG).

The picture takes plain data (`TimelinePicture`), not the report: incident.py builds one from a report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple
from xml.sax.saxutils import escape

from runbook.models import EventKind, TimelineEvent
from runbook.report.formatting import fmt_duration

WIDTH = 960
LEFT = 40
RIGHT = 40
AXIS_Y = 150

# (from key time, to key time, label, colour)
PHASES = (
    ("detected", "response_initiated", "Detect → respond", "#f4a261"),
    ("response_initiated", "root_cause_identified", "Diagnose", "#e9c46a"),
    ("root_cause_identified", "resolution_implemented", "Fix", "#2a9d8f"),
    ("resolution_implemented", "service_restored", "Verify", "#8ab17d"),
)

MARKED_KINDS: dict[str, str] = {
    EventKind.ACKNOWLEDGED: "#264653",
    EventKind.APPROVAL_REQUESTED: "#6d597a",
    EventKind.APPROVAL: "#6d597a",
    EventKind.ESCALATED: "#d62828",
    EventKind.PAGED: "#e76f51",
}


class KeyMoment(NamedTuple):
    """One of the report's key times (detected, response_initiated, …): its label and when, if recorded."""

    key: str
    label: str
    at: datetime | None


@dataclass(frozen=True)
class TimelinePicture:
    """What the picture shows: a title, the key times in the template's order, the timeline, MTTA and MTTR."""

    title: str
    key_times: Sequence[KeyMoment]
    events: Sequence[TimelineEvent]
    mtta: timedelta | None
    mttr: timedelta | None
    resolved_at: datetime | None
    generated_at: datetime

    def key_time(self, key: str) -> datetime | None:
        """Return the time of one key event, or None."""
        return next((k.at for k in self.key_times if k.key == key), None)


def render_timeline_svg(picture: TimelinePicture) -> str:
    """Return an SVG of the incident: phase bands, the five key times and other notable events on a time axis."""
    times = [k.at for k in picture.key_times if k.at] + [e.at for e in picture.events
                                                         if e.kind != EventKind.REPORT_WRITTEN]
    start = picture.key_time("detected") or (min(times) if times else picture.generated_at)
    end_candidates = [t for t in (picture.key_time("service_restored"), picture.resolved_at) if t]
    in_incident = [t for t in times if not end_candidates or t <= max(end_candidates)]
    end = max([*end_candidates, *in_incident, start])
    span = max((end - start).total_seconds(), 1.0)
    plot = WIDTH - LEFT - RIGHT

    def x(at: datetime) -> float:
        return LEFT + plot * min(max((at - start).total_seconds() / span, 0.0), 1.0)

    title = picture.title
    height = 300
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<text x="{LEFT}" y="44" fill="#555">MTTA {escape(fmt_duration(picture.mtta))} · '
        f"MTTR {escape(fmt_duration(picture.mttr))}</text>",
    ]
    for begin_key, end_key, label, band in PHASES:
        a, b = picture.key_time(begin_key), picture.key_time(end_key)
        if a is None or b is None or b < a:
            continue
        x1, x2 = x(a), x(b)
        out.append(f'<rect class="phase" x="{x1:.1f}" y="{AXIS_Y - 50}" width="{max(x2 - x1, 2):.1f}" '
                   f'height="34" fill="{band}" opacity="0.85"><title>{escape(label)}: '
                   f"{escape(fmt_duration(b - a))}</title></rect>")
        if x2 - x1 > 50:
            out.append(f'<text x="{(x1 + x2) / 2:.1f}" y="{AXIS_Y - 28}" text-anchor="middle">{escape(label)}</text>')
    out.append(f'<line x1="{LEFT}" y1="{AXIS_Y}" x2="{WIDTH - RIGHT}" y2="{AXIS_Y}" stroke="#333"/>')
    for i in range(5):
        tick = start + timedelta(seconds=span * i / 4)
        tx = x(tick)
        out.append(f'<line x1="{tx:.1f}" y1="{AXIS_Y}" x2="{tx:.1f}" y2="{AXIS_Y + 5}" stroke="#333"/>')
        out.append(f'<text x="{tx:.1f}" y="{AXIS_Y + 18}" text-anchor="middle" fill="#555">'
                   f"{tick:%H:%M:%S}</text>")
    for ev in picture.events:
        colour = MARKED_KINDS.get(ev.kind)
        if colour is None or not (start <= ev.at <= end):
            continue
        ex = x(ev.at)
        out.append(f'<circle class="event" cx="{ex:.1f}" cy="{AXIS_Y}" r="4" fill="{colour}">'
                   f"<title>{escape(f'{ev.at:%H:%M:%S} {ev.kind}: {ev.summary}')}</title></circle>")
    y = AXIS_Y + 40
    for kt in picture.key_times:
        if kt.at is None:
            continue
        kx = x(kt.at)
        out.append(f'<line x1="{kx:.1f}" y1="{AXIS_Y - 8}" x2="{kx:.1f}" y2="{y - 10}" stroke="#999" '
                   'stroke-dasharray="2,2"/>')
        out.append(f'<circle class="key" cx="{kx:.1f}" cy="{AXIS_Y}" r="6" fill="#1d3557"/>')
        anchor = "start" if kx < WIDTH * 0.6 else "end"
        out.append(f'<text class="key-label" x="{kx:.1f}" y="{y}" text-anchor="{anchor}">'
                   f"{escape(kt.label)} {kt.at:%H:%M:%S}</text>")
        y += 18
    out.append("</svg>")
    return "\n".join(out) + "\n"

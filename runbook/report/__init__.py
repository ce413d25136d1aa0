"""The incident report and its timeline picture, computed from the incident record and its timeline.

    incident.py      the report (the runbook's "Incident Report Template"): key times, MTTA/MTTR, Markdown, files
    timeline_svg.py  the timeline picture (SVG), drawn from plain data (`TimelinePicture`)
    metrics.py       MTTA and MTTR per severity over a period (`runbook metrics`)
    formatting.py    how durations and times are written (shared by the three)

`from runbook.report import …` names the public parts; the picture never imports the report.
"""

from runbook.report.formatting import fmt_duration, fmt_time
from runbook.report.incident import (
    NOT_RECORDED,
    TEMPLATE_SECTIONS,
    IncidentReport,
    KeyTime,
    ReportFiles,
    build_report,
    load_report,
    render_markdown,
    write_report,
)
from runbook.report.metrics import Metrics, SeverityMetrics, compute_metrics, render_metrics, summarize
from runbook.report.timeline_svg import TimelinePicture, render_timeline_svg

__all__ = [
    "NOT_RECORDED",
    "TEMPLATE_SECTIONS",
    "IncidentReport",
    "KeyTime",
    "Metrics",
    "ReportFiles",
    "SeverityMetrics",
    "TimelinePicture",
    "build_report",
    "compute_metrics",
    "fmt_duration",
    "fmt_time",
    "load_report",
    "render_markdown",
    "render_metrics",
    "render_timeline_svg",
    "summarize",
    "write_report",
]

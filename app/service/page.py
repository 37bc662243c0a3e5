"""The status page for the person at the PACS desk: server-rendered HTML, no build step, refreshes itself."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.service.views import JobView

__all__ = ["login_page", "status_page"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
h1{font-size:1.3rem}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #ddd;vertical-align:top;font-size:.9rem}
.state{font-weight:600}.succeeded{color:#176b2c}.failed{color:#a11}.running,.queued,.assembling{color:#8a5a00}
.cancelled{color:#666}img.preview{max-width:520px;border:1px solid #ccc}
.note{color:#666;font-size:.85rem}code{font-size:.85rem}
"""


def _page(title: str, body: str, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}<title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def login_page(message: str = "") -> str:
    note = f'<p class="failed">{escape(message)}</p>' if message else ""
    return _page(
        "GadSynth: sign in",
        "<h1>GadSynth</h1>"
        f"{note}<p>Enter an API key to see the jobs.</p>"
        '<form method="post" action="/login"><input type="password" name="key" id="key" size="48" '
        'autocomplete="off"> <button type="submit" id="sign-in">Show jobs</button></form>',
    )


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _trust_cell(job: JobView) -> str:
    """The table's verdict on the inputs: outside / inside the validated range, or nothing when not assessed."""
    trust = job.trust
    if trust is None or trust.outside_validated_range is None:
        return ""
    if trust.outside_validated_range:
        return f'<span class="state failed">OUTSIDE validated range (score {trust.ood_score:.1f})</span>'
    return f"validated range (score {trust.ood_score:.1f})"


def _trust_details(job: JobView) -> str:
    """The job's details: the input verdict in words and the uncertainty figures."""
    trust = job.trust
    if trust is None:
        return ""
    parts = []
    if trust.outside_validated_range:
        parts.append(
            f"<p><strong>Outside the validated range:</strong> input distribution score {trust.ood_score:.2f} above "
            f"{trust.ood_threshold:g} (furthest: {escape(trust.ood_worst_feature or '')}). The result was produced "
            "but the model was not validated on such input.</p>"
        )
    if trust.uncertainty_median_brain is not None:

        def value(v: float | None) -> str:
            return "-" if v is None else f"{v:.3g}"

        parts.append(
            "<p>Uncertainty (std of the synthetic image, source units): brain median "
            f"{value(trust.uncertainty_median_brain)}, 95th percentile {value(trust.uncertainty_p95_brain)}; "
            f"predicted enhancement median {value(trust.uncertainty_median_enhancement)}, 95th percentile "
            f"{value(trust.uncertainty_p95_enhancement)}; low confidence {value(trust.low_confidence_ml)} ml.</p>"
        )
    return "".join(parts)


def status_page(jobs: list[JobView], total: int, extra: str = "") -> str:
    """The jobs table and each finished job's details; ``extra`` is more HTML after the table (the DICOM node's
    receptions and exports, already escaped)."""
    rows = []
    details = []
    for job in jobs:
        stage = job.stage or ""
        if job.state == "running":
            stage = f"{stage} ({job.progress:.0%})"
        error = escape(job.error.message or "") if job.error else ""
        rows.append(
            f'<tr id="job-{escape(job.id)}">'
            f'<td><a href="#detail-{escape(job.id)}"><code>{escape(job.id)}</code></a></td>'
            f'<td class="state {escape(job.state)}">{escape(job.state)}'
            f"{' (' + escape(job.reason) + ')' if job.reason else ''}</td>"
            f"<td>{escape(stage)}</td><td>{_age(job.age_s)}</td><td>{escape(job.model or '')}</td>"
            f"<td>{job.attempt}/{job.max_attempts}</td><td>{escape(job.source)}</td><td>{_trust_cell(job)}</td>"
            f"<td>{error}</td></tr>"
        )
        if job.state in ("succeeded", "failed") and not job.purged:
            parts = [f'<section id="detail-{escape(job.id)}"><h2>Job <code>{escape(job.id)}</code></h2>']
            if job.state == "succeeded":
                parts.append(
                    f'<p><img class="preview" alt="preview of job {escape(job.id)}" '
                    f'src="/v1/jobs/{escape(job.id)}/preview.png"></p>'
                    f'<p><a href="/v1/jobs/{escape(job.id)}/result">result (zip)</a> · '
                )
            else:
                parts.append("<p>")
            parts.append(f'<a href="/v1/jobs/{escape(job.id)}/report">report.json</a></p>')
            parts.append(_trust_details(job))
            if job.warnings:
                parts.append("<ul>" + "".join(f"<li>{escape(w)}</li>" for w in job.warnings) + "</ul>")
            details.append("".join(parts) + "</section>")
    table = (
        "<table><thead><tr><th>job</th><th>state</th><th>stage</th><th>age</th><th>model</th><th>attempt</th>"
        "<th>from</th><th>inputs</th><th>error</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    body = (
        "<h1>GadSynth jobs</h1>"
        '<p class="note">Synthetic images: research use, not for diagnosis. '
        f"Showing {len(jobs)} of {total} jobs; this page refreshes every 10 s.</p>"
        + (table if jobs else "<p>No jobs yet.</p>")
        + extra
        + "".join(details)
    )
    return _page("GadSynth jobs", body, refresh=10)

"""The DICOM node on the status page: studies being received (with counts), recent receptions, the export queue."""

from __future__ import annotations

from html import escape

from app.dicom_node.api import export_view, reception_view
from app.dicom_node.records import NodeStore

__all__ = ["dicom_sections"]

_SHOWN = 20


def _cell(value: object) -> str:
    return f"<td>{escape('' if value is None else str(value))}</td>"


def dicom_sections(store: NodeStore) -> str:
    """HTML for the status page: receptions (receiving first) and exports (dead ones are listed with their error and
    how to retry). Empty when the node has never received or sent anything."""
    receptions, n_receptions = store.page_receptions(None, _SHOWN, 0)
    exports, n_exports = store.page_exports(None, None, _SHOWN, 0)
    parts = []
    if receptions:
        rows = []
        for view in map(reception_view, receptions):
            what = view.job_id or view.reason or ""
            if view.state == "receiving" and view.quiet_left_s is not None:
                what = f"routed in {view.quiet_left_s:.0f} s unless more arrives"
            rows.append(
                f'<tr id="reception-{escape(view.id)}"><td><code>{escape(view.id)}</code></td>'
                f'<td class="state {escape(view.state)}">{escape(view.state)}</td>'
                + _cell(f"{view.calling_ae}@{view.peer}")
                + _cell(view.study_instance_uid)
                + _cell(f"{view.n_instances} MR, {view.n_other} other, {view.n_skipped} skipped")
                + _cell(what)
                + _cell(view.message or "")
                + "</tr>"
            )
        parts.append(
            f'<h2 id="receptions">DICOM receptions</h2><p class="note">Showing {len(receptions)} of {n_receptions}; '
            "<code>/v1/receptions</code> has the series selection log of each.</p>"
            "<table><thead><tr><th>reception</th><th>state</th><th>from</th><th>study</th><th>instances</th>"
            "<th>job / reason</th><th>note</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        )
    if exports:
        rows = []
        for export in map(export_view, exports):
            state = export.state + (" (POST /v1/exports/" + export.id + "/retry)" if export.state == "dead" else "")
            rows.append(
                f'<tr id="export-{escape(export.id)}"><td><code>{escape(export.id)}</code></td>'
                f'<td class="state {escape(export.state)}">{escape(state)}</td>'
                + _cell(export.job_id)
                + _cell(f"{export.destination} ({export.kind})")
                + _cell(f"{export.n_confirmed}/{export.n_instances}")
                + _cell(f"{export.attempt}/{export.max_attempts}")
                + _cell(export.last_error or "")
                + "</tr>"
            )
        parts.append(
            f'<h2 id="exports">Exports</h2><p class="note">Showing {len(exports)} of {n_exports}.</p>'
            "<table><thead><tr><th>export</th><th>state</th><th>job</th><th>destination</th><th>confirmed</th>"
            "<th>attempt</th><th>last error</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        )
    return "".join(parts)

"""GadSynth's DICOM node: receive studies from a PACS or scanner (C-STORE), route them, send results back.

The node runs inside `gadsynth serve` (:mod:`app.dicom_node.runtime`) beside the HTTP service and feeds the same job
engine: instances are written durably to the spool (:mod:`~app.dicom_node.reception`), a study that has been quiet
for its quiet period is read and routed by the rules (:mod:`~app.dicom_node.routing`,
:mod:`~app.dicom_node.assembly`) and becomes a job for the worker pool; when the job succeeds, its DICOM results go to
the study's destinations through a persistent export queue (:mod:`~app.dicom_node.export`). GadSynth's own output
sent back by a forwarding PACS is recognised and never routed (:mod:`~app.dicom_node.instances`).

This package's modules import lazily: the service settings import :mod:`~app.dicom_node.config` only.
"""

__all__: list[str] = []

"""The MAP: the pipeline's stages as MONAI Deploy operators chained with add_flow (DICOM study in, DICOM out)."""

from __future__ import annotations

import logging
from itertools import pairwise
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, ConditionType, Fragment, Operator, OperatorSpec

from app.pipeline import Job, Pipeline, PipelineRequest, PipelineResult, Stage, StageResults

__all__ = ["GadSynthApp", "StageOperator", "run_map"]

logger = logging.getLogger(__name__)


class StageOperator(Operator):  # type: ignore[misc]  # Operator comes from an untyped package
    """One pipeline stage (``app.pipeline.STAGES``) as a MONAI Deploy operator.

    Named input:
        job: the `app.pipeline.Job` in progress (absent on the first operator, which is given the job).

    Named output:
        job: the same job, with this stage's result added (or its failure recorded).

    The stage runs through :meth:`app.pipeline.Pipeline.run_stage`, which records a failure instead of raising;
    the job is always received and passed on, so a rejected study ends the graph at once (the stages after the
    failure do nothing) instead of leaving an input unconsumed for the scheduler to retry forever.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        pipeline: Pipeline,
        stage: Stage,
        job: Job | None = None,
        last: bool = False,
        **kwargs: Any,
    ) -> None:
        self.input_name_job = "job"
        self.output_name_job = "job"
        self._pipeline = pipeline
        self._stage = stage
        self._job = job
        self._last = last
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        if self._job is None:
            spec.input(self.input_name_job)
        output = spec.output(self.output_name_job)
        if self._last:
            output.condition(ConditionType.NONE)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        job: Job = self._job if self._job is not None else op_input.receive(self.input_name_job)
        self._pipeline.run_stage(self._stage, job)
        op_output.emit(job, self.output_name_job)


class GadSynthApp(Application):  # type: ignore[misc]  # Application comes from an untyped package
    """GadSynth as a MONAI Deploy application: one operator per stage of the job's request, in stage order.

    Parameters
    ----------
    pipeline:
        The pipeline (settings, rules, warm model sessions).
    job:
        The job to run (from :meth:`app.pipeline.Pipeline.start`); report.json is written by
        :func:`run_map` from the job once the graph has finished.
    """

    def __init__(self, *, pipeline: Pipeline, job: Job, argv: list[str] | None = None) -> None:
        self._pipeline = pipeline
        self._job = job
        super().__init__(argv or ["gadsynth"])

    def compose(self) -> None:
        stages = self._pipeline.stages(self._job.request)
        operators = [
            StageOperator(
                self,
                *([CountCondition(self, 1)] if index == 0 else []),
                name=stage.name,
                pipeline=self._pipeline,
                stage=stage,
                job=self._job if index == 0 else None,
                last=index == len(stages) - 1,
            )
            for index, stage in enumerate(stages)
        ]
        for upstream, downstream in pairwise(operators):
            self.add_flow(upstream, downstream, {("job", "job")})


def run_map(pipeline: Pipeline, request: PipelineRequest, given: StageResults | None = None) -> PipelineResult:
    """Run one study as the MAP does: the stage operators composed and run by the MONAI Deploy SDK.

    ``given`` holds results of stages that do not run (see :meth:`app.pipeline.Pipeline.start`).
    """
    job = pipeline.start(request, given)
    GadSynthApp(pipeline=pipeline, job=job).run()
    unvisited = [stage.name for stage in pipeline.stages(request) if stage.name not in job.visited]
    if unvisited and not job.failed:  # the graph stopped early: never report success for that
        job.error = RuntimeError(f"The MAP graph ended before stages {unvisited} ran.")
        job.failed_stage = unvisited[0]
    return pipeline.finish(job)

"""A model's lesion contrast and false enhancement by contrast agent and T1 sequence, from evaluation records.

    .venv/bin/python training/runs/figures_by_agent.py evaluation/ce-lowdose-v1 evaluation/ce-lowdose-v1/small-4mm

For each evaluation folder (or evaluation.json): per agent and sequence the phantom subjects were simulated with,
the mean c-bar and c-hat over their enhancing lesions and the mean false enhancement in normal brain over the
subjects (a share of the lesion contrast, in %). The summaries (`gadsynth evaluate-summary`) split by agent and field
strength together; this pools the fields, so each group has enough lesions to compare. In the test sets each agent
comes with one sequence, so an agent's row cannot tell the two apart: a set with the agent fixed (`gadsynth
evaluate --agent NAME`) can (issue 12: `evaluation/ce-lowdose-v1-diagnostic-agent-*`).
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.evaluate_report import metric_values
from training.evaluation_summary import load_evaluation


def finite_mean(values: list[float]) -> float:
    """Mean of the finite values (a lesion without a reference contrast has NaN ratios), NaN when none."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def group_of(subject: Mapping[str, Any]) -> tuple[str, str]:
    return subject["flavour"]["agent"], subject["flavour"]["t1_sequence"]


def main(paths: list[str]) -> None:
    lines: list[str] = []
    for name in paths:
        try:
            record = load_evaluation(Path(name))
        except (OSError, ValueError) as error:
            sys.stderr.write(f"{name}: not a readable evaluation record ({error})\n")
            sys.exit(2)
        subjects = [s for s in record["subjects"] if s.get("status") == "ok"]
        lines.append(f"{name} ({record['test_set']}, {record['options'].get('size', '?')})")
        lines.append("  agent           sequence  subjects  lesions  c-bar   c-hat   FE normal")
        for group in sorted({group_of(s) for s in subjects}):

            def keep(subject: Mapping[str, Any], lesion: Mapping[str, Any], group: tuple[str, str] = group) -> bool:
                return group_of(subject) == group and (not lesion or lesion["enhancing"])

            members = [s for s in subjects if group_of(s) == group]
            enhancing = sum(1 for s in members for lesion in s["lesions"] if lesion["enhancing"])
            c_bar, c_hat = (finite_mean(metric_values(record, "model", key, True, keep)) for key in ("c_bar", "c_hat"))
            fe_normal = finite_mean(metric_values(record, "model", "fe_normal", False, keep))
            lines.append(
                f"  {group[0]:<15} {group[1]:<8} {len(members):>9} {enhancing:>8}  {c_bar:.3f}"
                f"   {c_hat:.3f}   {100 * fe_normal:.3f} %"
            )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 2 or any(arg.startswith("-") for arg in sys.argv[1:]):  # no options: --help gets the usage
        sys.stderr.write(__doc__ or "")
        sys.exit(2)
    main(sys.argv[1:])

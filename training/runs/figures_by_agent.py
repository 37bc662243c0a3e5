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

import collections
import json
import sys
from pathlib import Path

import numpy as np


def finite_mean(values: list[float]) -> float:
    """Mean of the finite values (a lesion without a reference contrast has NaN ratios), NaN when none."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def main(paths: list[str]) -> None:
    lines: list[str] = []
    for name in paths:
        path = Path(name)
        file = path / "evaluation.json" if path.is_dir() else path
        try:
            record = json.loads(file.read_text())
        except (OSError, ValueError) as error:
            sys.stderr.write(f"{file}: not a readable evaluation record ({error})\n")
            sys.exit(2)
        lesions: dict[tuple[str, str], dict[str, list[float]]] = collections.defaultdict(
            lambda: collections.defaultdict(list)
        )
        fe: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        for subject in record["subjects"]:
            if subject.get("status", "ok") != "ok":
                continue
            group = (subject["flavour"]["agent"], subject["flavour"]["t1_sequence"])
            fe[group].append(subject["methods"]["model"]["fe_normal"])
            for lesion in subject["lesions"]:
                model = lesion["methods"].get("model", {})
                if lesion["enhancing"]:
                    for key in ("c_bar", "c_hat"):
                        lesions[group][key].append(model.get(key))
        lines.append(f"{name} ({record['test_set']}, {record['options'].get('size', '?')})")
        lines.append("  agent           sequence  subjects  lesions  c-bar   c-hat   FE normal")
        for group in sorted(fe):
            c_bar, c_hat = finite_mean(lesions[group]["c_bar"]), finite_mean(lesions[group]["c_hat"])
            lines.append(
                f"  {group[0]:<15} {group[1]:<8} {len(fe[group]):>9} {len(lesions[group]['c_bar']):>8}  {c_bar:.3f}"
                f"   {c_hat:.3f}   {100 * finite_mean(fe[group]):.3f} %"
            )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 2 or any(arg.startswith("-") for arg in sys.argv[1:]):  # no options: --help gets the usage
        sys.stderr.write(__doc__ or "")
        sys.exit(2)
    main(sys.argv[1:])

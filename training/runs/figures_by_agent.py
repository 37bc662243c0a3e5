"""A model's lesion contrast and false enhancement by contrast agent, from evaluation records (issue 12).

    .venv/bin/python training/runs/figures_by_agent.py evaluation/ce-lowdose-v1 evaluation/ce-lowdose-v1/small-4mm

For each evaluation folder (or evaluation.json): per agent, the mean c-bar and c-hat over its enhancing lesions and
the mean false enhancement in normal brain over its subjects (a share of the lesion contrast, in %), with the
sequence(s) its subjects were simulated with. The summaries (`gadsynth evaluate-summary`) split by agent and field
strength together; this pools the fields, so each agent has enough lesions to compare.
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
        record = json.loads((path / "evaluation.json" if path.is_dir() else path).read_text())
        lesions: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
        fe: dict[str, list[float]] = collections.defaultdict(list)
        sequences: dict[str, set[str]] = collections.defaultdict(set)
        for subject in record["subjects"]:
            agent = subject["flavour"]["agent"]
            sequences[agent].add(subject["flavour"]["t1_sequence"])
            fe[agent].append(subject["methods"]["model"]["fe_normal"])
            for lesion in subject["lesions"]:
                model = lesion["methods"].get("model", {})
                if lesion["enhancing"]:
                    for key in ("c_bar", "c_hat"):
                        lesions[agent][key].append(model.get(key))
        lines.append(f"{name} ({record['test_set']}, {record['options'].get('size', '?')})")
        lines.append("  agent           subjects  lesions  c-bar   c-hat   FE normal  sequences")
        for agent in sorted(fe):
            c_bar, c_hat = finite_mean(lesions[agent]["c_bar"]), finite_mean(lesions[agent]["c_hat"])
            lines.append(
                f"  {agent:<15} {len(fe[agent]):>8} {len(lesions[agent]['c_bar']):>8}  {c_bar:.3f}   {c_hat:.3f}"
                f"   {100 * finite_mean(fe[agent]):.3f} %    {', '.join(sorted(sequences[agent]))}"
            )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 2 or any(arg.startswith("-") for arg in sys.argv[1:]):  # no options: --help gets the usage
        sys.stderr.write(__doc__ or "")
        sys.exit(2)
    main(sys.argv[1:])

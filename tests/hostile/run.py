"""Run the hostile-input suite through the real command line and judge every variant (`make hostile`).

    python -m tests.hostile.run --out hostile-results [--only CLASS,...] [--limit-per-class N] [--jobs 2]

Writes ``hostile.json`` (one record per variant) and ``hostile.md`` (counts by class and outcome, the slowest
variant, the largest peak RSS, every failure with its reasons). Exit status 0 when every variant passes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.hostile.variants import Variant, all_variants, make_base

__all__ = ["Outcome", "judge", "main", "run_variant"]

REPO = Path(__file__).resolve().parents[2]
#: Targets of the issue: every variant under 30 s and 2 GiB.
MAX_SECONDS = 30.0
MAX_RSS_MIB = 2048.0
TIMEOUT_S = 120


@dataclass
class Outcome:
    """What one variant did, and whether that is what it should do."""

    name: str
    klass: str
    expect: str
    exit_code: int | None
    seconds: float
    peak_rss_mib: float
    passed: bool = False
    reasons: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None


def _run(command: list[str], cwd: Path) -> tuple[int | None, float, float, str]:
    """Run a command; (exit code or None on timeout, wall seconds, peak RSS MiB of the child, stderr)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr, env=_env())
        deadline = started + TIMEOUT_S
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                _, status, usage = os.wait4(process.pid, 0)
                stderr.seek(0)
                return (
                    None,
                    time.perf_counter() - started,
                    usage.ru_maxrss / 1024.0,
                    stderr.read().decode(errors="replace"),
                )
            time.sleep(0.05)
        stderr.seek(0)
        text = stderr.read().decode(errors="replace")
    return os.waitstatus_to_exitcode(status), time.perf_counter() - started, usage.ru_maxrss / 1024.0, text


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GADSYNTH_", "HOLOSCAN_"))}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _dciodvfy_errors(path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        return ["dciodvfy is not installed"]
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def judge(variant: Variant, exit_code: int | None, seconds: float, rss: float, stderr: str, out: Path) -> Outcome:
    """Judge one run against what the variant should do (see the module docstring of variants.py)."""
    outcome = Outcome(variant.name, variant.klass, variant.expect, exit_code, round(seconds, 2), round(rss, 1))
    reasons = outcome.reasons
    if exit_code is None:
        reasons.append(f"did not finish in {TIMEOUT_S} s")
    elif exit_code not in (0, 2):
        reasons.append(f"exit {exit_code}")
    elif variant.expect == "refuse" and exit_code != 2:
        reasons.append("succeeded on input it should refuse")
    elif variant.expect == "ok" and exit_code != 0:
        reasons.append("refused input it should accept")
    if "Traceback" in stderr:
        reasons.append("traceback on stderr")
    if seconds > MAX_SECONDS:
        reasons.append(f"took {seconds:.1f} s (limit {MAX_SECONDS:g})")
    if rss > MAX_RSS_MIB:
        reasons.append(f"peak RSS {rss:.0f} MiB (limit {MAX_RSS_MIB:g})")
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() and variant.prepare_output is None else None
    if exit_code == 2 and variant.prepare_output is None:
        error = (report or {}).get("error") or {}
        outcome.error = error or None
        if report is None:
            reasons.append("no report.json")
        missing = [key for key in ("attribute", "expected", "found") if not error.get(key)]
        if missing:
            reasons.append(f"error lacks {', '.join(missing)}")
        if list(out.rglob("*.dcm")):
            reasons.append("DICOM left behind by a failed run")
    if exit_code == 0:
        written = sorted(out.rglob("*.dcm"))
        if not written:
            reasons.append("exit 0 but no DICOM written")
        synthetic = [p for p in written if p.parent.name == "synthetic_t1c"]
        checked = [*synthetic[:2], *[p for p in written if p.parent.name in ("seg", "sr")]]
        for path in checked:
            errors = _dciodvfy_errors(path)
            if errors:
                reasons.append(f"dciodvfy: {path.name}: {errors[0]}")
                break
    outcome.passed = not reasons
    return outcome


def run_variant(variant: Variant, bases: Path, work: Path, python: str = sys.executable) -> Outcome:
    """Copy the variant's base study, break it, run ``python -m app`` on it and judge the result."""
    if work.exists():
        shutil.rmtree(work)
    study = work / "study"
    shutil.copytree(make_base(variant.base, bases), study, symlinks=True)
    try:
        variant.mutate(study)
        if variant.prepare_output is not None:
            variant.prepare_output(work)
    except Exception as exc:  # the generator's own failure: reported, and the suite goes on
        outcome = Outcome(variant.name, variant.klass, variant.expect, None, 0.0, 0.0)
        outcome.reasons.append(f"the variant could not be made: {type(exc).__name__}: {exc}"[:300])
        return outcome
    out = work / variant.output
    args = [a.replace("__WORK__", str(work)) for a in variant.args]
    if "__FIRST_STUDY__" in args:
        from pydicom import dcmread

        first = next((study / "002_t1-mprage-sag-p2-iso").glob("*.dcm"), None) or next(study.rglob("*.dcm"))
        args = [
            str(dcmread(first, stop_before_pixels=True).StudyInstanceUID) if a == "__FIRST_STUDY__" else a for a in args
        ]
    command = [python, "-m", "app", "-i", str(study), "-o", str(out), *args]
    exit_code, seconds, rss, stderr = _run(command, cwd=work)
    return judge(variant, exit_code, seconds, rss, stderr, out)


def _markdown(outcomes: list[Outcome]) -> str:
    classes = sorted({o.klass for o in outcomes})
    lines = [
        f"# Hostile-input suite: {len(outcomes)} variants, {sum(o.passed for o in outcomes)} pass",
        "",
        "| class | variants | pass | fail | exit 0 | exit 2 | exit 1 / other | slowest s | peak RSS MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for klass in [*classes, None]:
        group = [o for o in outcomes if klass is None or o.klass == klass]
        codes = Counter(o.exit_code for o in group)
        other = sum(n for code, n in codes.items() if code not in (0, 2))
        lines.append(
            f"| {klass or '**all**'} | {len(group)} | {sum(o.passed for o in group)} | "
            f"{sum(not o.passed for o in group)} | {codes.get(0, 0)} | {codes.get(2, 0)} | {other} | "
            f"{max(o.seconds for o in group):.1f} | {max(o.peak_rss_mib for o in group):.0f} |"
        )
    slowest = max(outcomes, key=lambda o: o.seconds)
    largest = max(outcomes, key=lambda o: o.peak_rss_mib)
    lines += [
        "",
        f"Slowest: `{slowest.name}` {slowest.seconds:.1f} s (target under {MAX_SECONDS:g} s). "
        f"Largest peak RSS: `{largest.name}` {largest.peak_rss_mib:.0f} MiB (target under {MAX_RSS_MIB:g} MiB).",
        "",
    ]
    failures = [o for o in outcomes if not o.passed]
    if failures:
        lines += ["## Failures", ""]
        lines += [
            f"- `{o.name}` ({o.klass}, expect {o.expect}, exit {o.exit_code}): {'; '.join(o.reasons)}" for o in failures
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("hostile-results"))
    parser.add_argument("--only", default=None, help="Comma-separated classes.")
    parser.add_argument("--limit-per-class", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    variants = all_variants()
    if args.only:
        wanted = set(args.only.split(","))
        variants = [v for v in variants if v.klass in wanted]
    if args.limit_per_class:
        counts: Counter[str] = Counter()
        kept = []
        for variant in variants:
            if counts[variant.klass] < args.limit_per_class:
                kept.append(variant)
                counts[variant.klass] += 1
        variants = kept
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gadsynth-hostile-") as scratch:
        root = Path(scratch)
        for base in sorted({v.base for v in variants}):
            make_base(base, root / "bases")

        def one(item: tuple[int, Variant]) -> Outcome:
            index, variant = item
            outcome = run_variant(variant, root / "bases", root / f"v{index:04d}")
            shutil.rmtree(root / f"v{index:04d}", ignore_errors=True)
            mark = "pass" if outcome.passed else "FAIL " + "; ".join(outcome.reasons)
            where = f"[{index + 1}/{len(variants)}] {variant.name}"
            print(f"{where}: exit {outcome.exit_code}, {outcome.seconds:.1f} s: {mark}", flush=True)
            return outcome

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            outcomes = list(pool.map(one, enumerate(variants)))
    (args.out / "hostile.json").write_text(
        json.dumps([asdict(o) for o in outcomes], indent=1, ensure_ascii=False) + "\n"
    )
    (args.out / "hostile.md").write_text(_markdown(outcomes))
    print(_markdown(outcomes))
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

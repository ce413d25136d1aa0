"""Every drill scenario N times in a row: `python -m bench.drill_repeat [--runs 10] [--scenario NAME …]`.

Issue 22 asks that every scenario pass 10 runs in a row with a detection margin (the monitor cycles it needed well
inside what the drill allows). Each round is one `runbook drill --all --json` (one temporary Prefect server for
the round's scenarios), so a round sees the same start-up as a person's drill. Prints one Markdown table row per
scenario (passes, detection cycles min/median/max against the allowance, the severity and rule it was declared
with, the drill's duration) and the load average, for BENCHMARKS.md. Exit code 1 when any run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from deployments.drill import DETECTION_CYCLES
from runbook.drill.scenarios import SCENARIOS


def _round(scenarios: list[str], state_dir: Path) -> list[dict[str, Any]]:
    runbook = Path(sys.executable).with_name("runbook")
    command = [str(runbook), "drill", "--json", "--state-dir", str(state_dir)]
    command += ["--all"] if scenarios == sorted(SCENARIOS) else scenarios[:1]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        payload = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return [{"scenario": s, "ok": False, "error": f"no JSON (exit {proc.returncode}): {' | '.join(tail)}"}
                for s in scenarios]
    return payload if isinstance(payload, list) else [payload]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drill_repeat", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="rounds (10)")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="only this scenario (repeatable; one per round then); default: all of them")
    args = parser.parse_args(argv)
    scenarios = sorted(args.scenario) if args.scenario else sorted(SCENARIOS)
    results: dict[str, list[dict[str, Any]]] = defaultdict(list)
    loads: list[float] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="drill-repeat-") as tmp:
        for n in range(1, args.runs + 1):
            rounds = [scenarios] if len(scenarios) == len(SCENARIOS) else [[s] for s in scenarios]
            for batch in rounds:
                for r in _round(batch, Path(tmp)):
                    results[r["scenario"]].append(r)
                    mark = "PASS" if r.get("ok") else f"FAIL {r.get('error') or ''}"
                    print(f"round {n}: {r['scenario']}: {mark} cycles={r.get('detected_after_cycles')} "
                          f"{r.get('severity')}/{r.get('rule')} {r.get('duration_s', 0):.0f}s", flush=True)
            loads.append(os.getloadavg()[0])
    print(f"\n{args.runs} round(s) in {time.monotonic() - began:.0f} s; load average (1 min) after each round: "
          f"{', '.join(f'{x:.1f}' for x in loads)}; detection allowance {DETECTION_CYCLES} cycles\n")
    print("| scenario | passed | detection cycles min / median / max | declared as | drill min / median / max |")
    print("| --- | --- | --- | --- | --- |")
    failed = False
    for name in scenarios:
        runs = results[name]
        passed = sum(1 for r in runs if r.get("ok"))
        failed |= passed < len(runs)
        cycles = [r["detected_after_cycles"] for r in runs if r.get("detected_after_cycles") is not None]
        durations = [r.get("duration_s", 0.0) for r in runs if r.get("ok")]
        declared = sorted({f"{r.get('severity')} {r.get('rule')}" for r in runs if r.get("severity")})
        c = f"{min(cycles)} / {statistics.median(cycles):g} / {max(cycles)}" if cycles else "–"
        d = (f"{min(durations):.0f} / {statistics.median(durations):.0f} / {max(durations):.0f} s"
             if durations else "–")
        print(f"| {name} | {passed}/{len(runs)} | {c} | {', '.join(declared) or '–'} | {d} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

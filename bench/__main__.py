"""`make bench`: run every benchmark (results are copied into BENCHMARKS.md by hand, with the date and machine)."""

import runpy
import sys
from pathlib import Path

for script in ("drill_startup.py", "store_dedupe.py", "monitor_baselines.py"):
    print(f"== {script}", flush=True)
    sys.argv = [script]
    runpy.run_path(str(Path(__file__).parent / script), run_name="__main__")

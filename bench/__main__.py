"""`make bench`: run every benchmark (results are copied into BENCHMARKS.md by hand, with the date and machine)."""

import runpy
import sys

for module in ("drill_startup", "store_dedupe", "monitor_baselines"):
    print(f"== bench.{module}", flush=True)
    sys.argv = [module]
    runpy.run_module(f"bench.{module}", run_name="__main__")

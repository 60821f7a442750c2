"""Run every benchmark in its own process, one after the other, and print their reports.

Run from the repository root: ``python benchmarks/run_all.py`` (about three minutes on an idle
machine).
"""

import subprocess
import sys
from pathlib import Path

SCRIPTS = ["bench_mean_cca.py", "bench_svcca.py", "bench_to_final.py", "bench_conv.py"]
SCRIPTS += ["bench_memory.py", "bench_float32_gram.py"]


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = 0
    for script in SCRIPTS:
        result = subprocess.run([sys.executable, str(here / script)], cwd=here, check=False)
        failed += result.returncode != 0
        print(flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())

"""Run scripts/gpu/sample_gpu.py unchanged, but with the teacher folder given as the first argument
(sample_gpu.py loads clockwork.embedded.teacher.DEFAULT_TEACHER_DIR, the committed teacher)."""
import runpy
import sys
from pathlib import Path

import clockwork.embedded.teacher as T

T.DEFAULT_TEACHER_DIR = Path(sys.argv.pop(1)).resolve()
print("teacher:", T.DEFAULT_TEACHER_DIR, flush=True)
sys.argv[0] = "scripts/gpu/sample_gpu.py"
runpy.run_path("scripts/gpu/sample_gpu.py", run_name="__main__")

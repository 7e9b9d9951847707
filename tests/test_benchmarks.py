"""Every script of benchmarks/ imports against today's package: a benchmark whose imports broke when a module
it borrows from moved is found by CI, not by the next person who measures."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# one interpreter for all scripts (torch and TensorFlow load once); each script as a module, not as __main__
IMPORT_ALL = """
import importlib.util, sys, traceback
sys.path.insert(0, sys.argv[1])
failed = []
for path in sys.argv[2:]:
    name = path.rsplit('/', 1)[-1][:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        failed.append(name + ': ' + traceback.format_exc(limit=-2))
print('\\n'.join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_benchmark_script_imports():
    scripts = sorted(str(path) for path in BENCHMARKS.glob("*.py"))
    assert len(scripts) >= 10
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL, str(BENCHMARKS), *scripts], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

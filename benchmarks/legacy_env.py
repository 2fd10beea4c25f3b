"""Build the virtual environment of the released melange 7.2.0, once.

Its declared dependencies no longer resolve on Python 3.11 (``redis-simple-cache-py3`` and
``singleton-py3`` pull a C extension that does not build), so the package and those three are
installed without their dependencies, and the runtime modules 7.2.0 imports are pinned
explicitly. Only its SQS and in-memory paths work there, which is what the harness drives.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LEGACY_ENV = Path("/tmp/melange72")
#: What 7.2.0 imports at run time, pinned to versions its code works with.
RUNTIME = ["boto3", "funcy<2", "methoddispatch<4", "toolz<0.12", "redis<4", "pytz<2020"]
#: Installed without their dependencies (see the module docstring).
NO_DEPS = [
    "melange==7.2.0",
    "singleton-py3<0.3",
    "redis-simple-cache-py3<0.0.8",
    "simple-cqrs==1.0.0",
]


def python() -> Path:
    """The interpreter of the 7.2.0 environment."""
    return LEGACY_ENV / "bin" / "python"


def ensure(log: Path) -> Path:
    """Create the environment if it is missing or broken; returns its interpreter."""
    check = [str(python()), "-c", "import melange.backends.sqs.localsqs, boto3"]
    if python().exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python()
    with log.open("a") as out:
        base = "python3.11" if sys.version_info[:2] != (3, 11) else sys.executable
        subprocess.run([base, "-m", "venv", str(LEGACY_ENV)], check=True, stdout=out, stderr=out)
        pip = [str(python()), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, *RUNTIME], check=True, stdout=out, stderr=out)
        subprocess.run([*pip, "--no-deps", *NO_DEPS], check=True, stdout=out, stderr=out)
    subprocess.run(check, check=True, capture_output=True)
    return python()

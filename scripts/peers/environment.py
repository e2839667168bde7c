"""The peers' own virtualenvs: libpecos pins numpy<2 and scipy<1.14, which xmr's environment cannot take, and ScaNN
needs numpy>=2, which libpecos cannot; so benchmarks run the peers in .venv-peers (everything but ScaNN) and
.venv-peers-scann as subprocesses and exchange data through files.

libpecos installs without its declared dependencies (``--no-deps``): they include torch and transformers, for PECOS's
XR-Transformer, which the peers never import (HNSW and XR-Linear need numpy, scipy and scikit-learn). glass is the
``pyglass-portable`` wheel (imported as ``glass``): ``glassppy`` has no installable file for this platform.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANN_SYSTEMS = ("scann",)
ENVIRONMENTS = {  # name: (pip install argument lists, run in order; the import line that proves it complete)
    "peers": ([["numpy<2", "scipy<1.14", "scikit-learn", "napkinxc==0.7.2", "hnswlib==0.8.0", "usearch==2.26.6",
                "voyager==2.2.3", "ngt==2.8.0.post1", "pyglass-portable==2.1.0"], ["--no-deps", "libpecos==1.2.8"]],
              "import pecos.ann.hnsw, pecos.xmc.xlinear, napkinxc, hnswlib, sklearn, usearch, voyager, ngtpy, glass"),
    "peers-scann": ([["scann==1.4.2"]], "import scann"),
}


def peers_python(name: str = "peers") -> Path:
    """The interpreter of environment ``name`` (``.venv-<name>``), creating it or completing its packages on first
    use; raises ``CalledProcessError`` (with pip's output) when a package does not install."""
    installs, modules = ENVIRONMENTS[name]
    python = ROOT / f".venv-{name}" / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(python.parents[1])], check=True)
    if subprocess.run([str(python), "-c", modules], capture_output=True).returncode:
        for packages in installs:
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages], check=True,
                           capture_output=True, text=True)
    return python

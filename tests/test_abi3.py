"""One built wheel serves every CPython from 3.10: the extension uses only the stable ABI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_wheel_is_tagged_abi3_and_its_extension_imports_only_the_stable_abi(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                        "--outdir", str(tmp_path), ROOT], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    wheels = [n for n in os.listdir(tmp_path) if n.endswith(".whl")]
    assert len(wheels) == 1, wheels
    assert "-cp310-abi3-" in wheels[0], wheels[0]
    with zipfile.ZipFile(tmp_path / wheels[0]) as z:
        sos = [n for n in z.namelist() if n.endswith(".so")]
    assert sos == ["plugqdisc/_plugqdisc.abi3.so"], sos
    audit = shutil.which("abi3audit") or os.path.join(os.path.dirname(sys.executable),
                                                      "abi3audit")
    r = subprocess.run([audit, "--strict", "--report", str(tmp_path / wheels[0])],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    (result,) = [so["result"] for spec in json.loads(r.stdout)["specs"].values()
                 for so in spec["wheel"]]
    # no symbol outside the stable ABI, none newer than the 3.10 the wheel is tagged for
    assert result["is_abi3"] and result["is_abi3_baseline_compatible"], result
    assert result["baseline"] == "3.10" and result["non_abi3_symbols"] == [], result
    assert result["future_abi3_objects"] == {}, result

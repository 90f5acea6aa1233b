"""The scripts in examples/ and the Python example of the README run as shipped, shortened through
``ASE_EQUIVARIANT_EXAMPLE_STEPS`` (the same code path), and print or write what they promise.

Each example runs in a subprocess in a temporary folder, with one torch thread (faster for these
small systems, and robust on a machine whose cores are busy with other jobs).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


#: runs the example named by its first argument as ``__main__``, with future warnings made errors
#: (ASE raises those about its callers' use from its own code) and deprecation warnings raised
#: about the example's own code or this package's (those that other libraries raise about their
#: own code, as ASE's under NumPy 2.5, are theirs)
RUNNER = """
import runpy, sys, warnings
warnings.filterwarnings("error", category=FutureWarning)
warnings.filterwarnings("error", category=DeprecationWarning, module=r"(__main__|ase_equivariant)(\\.|$)")
sys.argv = sys.argv[1:]
sys.path[0] = sys.argv[0].rpartition("/")[0]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_example(name, tmp_path, steps=None, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if steps is not None:
        env["ASE_EQUIVARIANT_EXAMPLE_STEPS"] = str(steps)
    result = subprocess.run([sys.executable, "-c", RUNNER, str(EXAMPLES / name)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def number(label, text):
    """The float that follows ``label`` in ``text`` (the last occurrence)."""
    found = re.findall(re.escape(label) + r"\s*([-+]?\d+\.?\d*(?:[eE][-+]?\d+)?)", text)
    assert found, f"{label!r} not in output:\n{text}"
    return float(found[-1])


def test_langevin(tmp_path):
    out = run_example("langevin.py", tmp_path, steps=20)
    frames = read(tmp_path / "cu_langevin.traj", ":")
    assert len(frames) == 3  # steps 0, 10, 20
    assert all(len(f) == 32 and np.isfinite(f.get_potential_energy()) for f in frames)
    assert not np.allclose(frames[0].positions, frames[-1].positions)
    assert len(re.findall(r"^t = ", out, flags=re.M)) == 2  # reports at steps 0 and 20
    assert 50 < number("mean T over the run:", out) < 600


def test_nve_prints_a_finite_small_drift(tmp_path):
    out = run_example("nve.py", tmp_path, steps=20)
    drift = number("total-energy drift:", out)
    first_to_last = number("(first to last:", out)
    fluctuation = number("total-energy fluctuation (std):", out)
    assert np.isfinite(drift) and np.isfinite(fluctuation)
    assert abs(first_to_last) < 0.5 and fluctuation < 0.5  # meV/atom over 40 fs: energy is conserved
    assert "20 steps of 2 fs" in out


def test_relax_crystal_shortened(tmp_path):
    out = run_example("relax_crystal.py", tmp_path, steps=3)
    assert "NOT converged after 3 steps" in out
    relaxed = read(tmp_path / "si_relaxed.extxyz")
    assert len(relaxed) == 64 and relaxed.get_forces().shape == (64, 3)
    start = read(REPO / "data" / "structures" / "si_strained.extxyz")
    assert not np.allclose(relaxed.cell.array, start.cell.array)  # the cell moved too
    assert "5.4310 Å (experiment)" in out
    assert 5.3 < number("lattice constant:", out) < 5.6


@pytest.mark.slow
def test_relax_crystal_converges_to_the_pbe_lattice_constant(tmp_path):
    out = run_example("relax_crystal.py", tmp_path)
    assert "converged after" in out and "NOT" not in out
    relaxed = read(tmp_path / "si_relaxed.extxyz")
    assert np.linalg.norm(relaxed.get_forces(), axis=1).max() < 0.01
    a = number("lattice constant:", out)
    assert 5.431 < a < 5.431 * 1.015  # PBE-trained: slightly above experiment
    np.testing.assert_allclose(relaxed.cell.angles(), 90, atol=0.1)


def test_molecule_md(tmp_path):
    out = run_example("molecule_md.py", tmp_path, steps=40)
    frames = read(tmp_path / "ethanol_md.traj", ":")
    assert len(frames) == 3  # steps 0, 20, 40
    assert not frames[-1].pbc.any() and frames[-1].get_chemical_formula() == "C2H6O"
    assert 1.3 < number("mean C-O bond", out) < 1.6
    assert number("mean T", out) > 0


def test_readme_python_example(tmp_path, monkeypatch):
    """The first Python block of README.rst, with 200 steps cut to 3."""
    text = (REPO / "README.rst").read_text()
    block = text.split(".. code-block:: python\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    code = "\n".join(lines)
    assert "dyn.run(200)" in code and "EquivariantCalculator()" in code
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code.replace("dyn.run(200)", "dyn.run(3)"), "README.rst", "exec"), {})
    finally:
        torch.set_num_threads(threads)
    frames = read(tmp_path / "cu.traj", ":")
    assert len(frames) == 1 and len(frames[0]) == 32  # step 0 (loginterval 20)

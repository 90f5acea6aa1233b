"""The ``ase-equivariant`` command: every subcommand runs and writes what it says; errors are one line.

Runs in-process through ``ase_equivariant.cli.main`` (one model load per call, a few tiny steps), and
twice through the installed console script in a subprocess (a normal run, and Ctrl-C).
Every run uses one torch thread: faster for these few-atom systems, and immune to a machine whose
other jobs keep the cores busy.
"""
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.io import read, write

from ase_equivariant import cli

REPO = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(capsys, *args):
    """``main(args + --threads 1)`` -> (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in args] + (["--threads", "1"] if args else []))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, expected_code, *fragments):
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def numbers_after(label, text):
    """Every float that follows ``label`` in ``text``."""
    return [float(x) for x in re.findall(re.escape(label) + r"\s*([-+]?\d+\.?\d*(?:[eE][-+]?\d+)?)", text)]


# ---------------------------------------------------------------------------------------------- md


def test_md_langevin_writes_trajectory_log_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    traj, log, png = tmp_path / "md.traj", tmp_path / "md.log", tmp_path / "md.png"
    code, out, err = run(capsys, "md", "--bulk", "Cu", "--repeat", "2", "--steps", 6, "--interval", 2,
                         "--trajectory", traj, "--log", log, "--plot", png, "--seed", 1, "--progress", 0)
    assert code == 0, err
    frames = read(traj, ":")
    assert len(frames) == 4  # steps 0, 2, 4, 6
    assert all(len(f) == 8 and np.isfinite(f.get_potential_energy()) for f in frames)
    assert frames[-1].get_forces().shape == (8, 3)
    assert not np.allclose(frames[0].positions, frames[-1].positions)
    log_lines = log.read_text().strip().splitlines()
    assert log_lines[0].startswith("Time[ps]") and len(log_lines) == 1 + 4
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000
    # progress lines: steps done, rate, ETA, T and energy; then a summary
    progress = [line for line in out.splitlines() if line.startswith("step ")]
    assert progress[0].startswith("step 1/6") and progress[-1].startswith("step 6/6 100%")
    assert all(k in progress[-1] for k in ("steps/s", "ETA", " K", "Epot", "eV"))
    assert "done: 6 steps" in out and "4 frames in" in out and "seed 1" in out

    # a trajectory carries momenta: a run started from its last frame goes on with them
    code, out, err = run(capsys, "md", traj, "--steps", 1, "--interval", 1)
    assert code == 0, err
    assert "starting from the momenta stored in the input" in out


def test_md_seed_makes_runs_reproducible(tmp_path, capsys):
    finals = []
    for i, seed in enumerate((3, 3, 4)):
        out_file = tmp_path / f"run{i}.extxyz"
        # on the CPU: a GPU's sums (atomic adds) are not in a fixed order
        code, _, err = run(capsys, "md", "--bulk", "Cu", "--cubic", "--steps", 3, "--interval", 3,
                           "--seed", seed, "--trajectory", out_file, "--device", "cpu")
        assert code == 0, err
        frames = read(out_file, ":")
        assert len(frames) == 2
        finals.append(frames[-1])
    np.testing.assert_array_equal(finals[0].positions, finals[1].positions)
    np.testing.assert_array_equal(finals[0].get_velocities(), finals[1].get_velocities())
    assert not np.allclose(finals[0].positions, finals[2].positions)


def test_md_nve_reports_a_small_energy_drift(capsys):
    code, out, err = run(capsys, "md", "--bulk", "Cu", "--cubic", "--ensemble", "nve", "--steps", 8,
                         "--interval", 2, "--seed", 0)
    assert code == 0, err
    assert "NVE" in out
    drift = numbers_after("total-energy drift", out)
    assert len(drift) == 1 and np.isfinite(drift[0]) and abs(drift[0]) < 1.0  # meV/atom over 8 fs


def test_md_npt_changes_the_volume(tmp_path, capsys):
    traj = tmp_path / "npt.traj"
    code, out, err = run(capsys, "md", "--bulk", "Cu", "--cubic", "--ensemble", "npt", "--pressure", 5,
                         "--pdamp", 50, "--steps", 6, "--interval", 3, "--trajectory", traj, "--seed", 0,
                         "--progress", 0)
    assert code == 0, err
    assert "NPT at 300 K and 5 GPa" in out
    assert "GPa" in out.splitlines()[-3] and "Å³" in out.splitlines()[-3]  # progress shows V and P
    volumes = [f.get_volume() for f in read(traj, ":")]
    assert len(volumes) == 3 and abs(volumes[-1] - volumes[0]) > 1e-4


def test_md_molecule_from_file_without_cell(tmp_path, capsys):
    traj = tmp_path / "etoh.extxyz"
    code, out, err = run(capsys, "md", REPO / "data" / "structures" / "ethanol.xyz", "--timestep", 0.5,
                         "--steps", 4, "--interval", 2, "--trajectory", traj, "--seed", 2)
    assert code == 0, err
    assert "no periodic cell" in out
    frames = read(traj, ":")
    assert len(frames) == 3 and not frames[-1].pbc.any()
    assert frames[-1].get_chemical_formula() == "C2H6O"


def test_md_ctrl_c_keeps_what_was_written(tmp_path, capsys, monkeypatch):
    from ase_equivariant.calculator import EquivariantCalculator

    calls = {"n": 0}
    calculate = EquivariantCalculator.calculate

    def interrupted_on_the_sixth_call(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return calculate(self, *args, **kwargs)

    monkeypatch.setattr(EquivariantCalculator, "calculate", interrupted_on_the_sixth_call)
    traj, log = tmp_path / "md.traj", tmp_path / "md.log"
    code, out, err = run(capsys, "md", "--bulk", "Cu", "--cubic", "--steps", 100, "--interval", 2,
                         "--trajectory", traj, "--log", log, "--seed", 0)
    # calls 1-2: initial energy, initial forces; calls 3-5: steps 1-3; the 6th (step 4) is interrupted
    assert code == 130
    assert "interrupted (Ctrl-C) after 3 of 100 steps" in err and "saved 2 frames in" in err
    assert "Traceback" not in err
    assert len(read(traj, ":")) == 2  # steps 0 and 2
    assert len(log.read_text().strip().splitlines()) == 1 + 2
    assert "stopped: 3 steps" in out


def test_md_plot_without_matplotlib_is_a_clear_error(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    code, out, err = run(capsys, "md", "--bulk", "Cu", "--steps", 1, "--plot", tmp_path / "x.png")
    assert_one_line_error(code, err, 2, "--plot needs matplotlib", "pip install")
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------------- relax


def test_relax_cell_converges_and_writes_forces(tmp_path, capsys):
    start = bulk("Cu", "fcc", a=3.72, cubic=True)
    start.rattle(0.03, seed=0)
    write(tmp_path / "start.cif", start)
    output = tmp_path / "relaxed.extxyz"
    code, out, err = run(capsys, "relax", tmp_path / "start.cif", "--cell", "--fmax", 0.01, "--output", output)
    assert code == 0, err
    relaxed = read(output)
    assert np.linalg.norm(relaxed.get_forces(), axis=1).max() < 0.01
    assert np.abs(relaxed.get_stress()).max() < 0.01  # eV/Å³ (the filter's fmax covers the cell too)
    assert relaxed.info["relax_converged"]
    a = (relaxed.get_volume() / 1) ** (1 / 3)  # one conventional cell
    assert 3.58 < a < 3.66  # SevenNet-0 (PBE): 3.61-3.63 Å
    assert "converged in" in out and f"wrote {output}" in out


def test_relax_not_converged_is_exit_code_1_with_the_structure_written(tmp_path, capsys):
    output = tmp_path / "partial.extxyz"
    code, out, err = run(capsys, "relax", REPO / "data" / "structures" / "ethanol.xyz", "--steps", 1,
                         "--output", output)
    assert_one_line_error(code, err, 1, "not converged after 1 steps", str(output))
    assert len(read(output)) == 9 and "stopped:" in out


# ---------------------------------------------------------------------------------------------- check


HAVE_SYMMETRY = importlib.util.find_spec("ase_equivariant.symmetry") is not None


@pytest.mark.skipif(not HAVE_SYMMETRY, reason="ase_equivariant.symmetry not there yet")
def test_check_emt_is_symmetric(capsys):
    code, out, err = run(capsys, "check", "--bulk", "Cu", "--cubic", "--calculator", "emt", "--seed", 0)
    assert code == 0, err
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in out.splitlines()
            if line.split() and line.split()[0] in ("rotation", "inversion", "translation", "permutation", "cell")}
    assert {"rotation", "inversion", "translation"} <= set(rows)
    assert max(max(v) for v in rows.values()) < 1e-8


@pytest.mark.skipif(not HAVE_SYMMETRY, reason="ase_equivariant.symmetry not there yet")
def test_check_our_model_on_a_molecule(capsys):
    code, out, err = run(capsys, "check", "--molecule", "H2O", "--seed", 0)
    assert code == 0, err
    assert "ase-equivariant sevennet-0 (float32)" in out
    rotation = [line for line in out.splitlines() if line.startswith("rotation")]
    energy, forces = (float(x) for x in rotation[0].split()[1:3])
    assert energy < 1e-5 and forces < 1e-4  # float32 round-off


def test_check_says_when_symmetry_is_not_available(capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ase_equivariant.symmetry" else find_spec(name, *a))
    code, out, err = run(capsys, "check", "--bulk", "Cu")
    assert_one_line_error(code, err, 2, "not available")


# ---------------------------------------------------------------------------------------------- bench


def test_bench_prints_a_timing_table(capsys):
    code, out, err = run(capsys, "bench", "--repeats", 1, "--calls", 2, "--md-steps", 2)
    assert code == 0, err
    assert "1 torch thread" in out and "torch " in out
    assert "compiled kernels" in out or "pure-torch convolution" in out
    row = [line.split() for line in out.splitlines() if line.split() and line.split()[0] == "4"]
    assert len(row) == 1  # 4 atoms: the cubic fcc cell
    per_call, steps_per_s = float(row[0][4]), float(row[0][-1])  # 4 42.0 0.05 s 0.04 s ... 20.1
    assert 0 < per_call < 10 and steps_per_s > 0


# ---------------------------------------------------------------------------------------------- errors


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "garbage.xyz").write_text("hello world\n")
    (tmp_path / "structure.unknownext").write_text("hello\n")
    (tmp_path / "bad_symbol.xyz").write_text("2\n\nXx 0 0 0\nH 0 0 1\n")
    write(tmp_path / "polonium.xyz", bulk("Po", "sc", a=3.35).repeat((2, 1, 1)))
    return tmp_path


@pytest.mark.parametrize("args,code,fragments", [
    (["md", "{tmp}/missing.xyz"], 1, ["no such file: ", "missing.xyz"]),
    (["relax", "{tmp}/missing.cif"], 1, ["no such file"]),
    (["md", "{tmp}/garbage.xyz"], 1, ["cannot read", "garbage.xyz"]),
    (["md", "{tmp}/structure.unknownext"], 1, ["unknown file type", "--format"]),
    (["md", "{tmp}/bad_symbol.xyz"], 1, ["unknown chemical symbol", "Xx"]),
    (["md", "--bulk", "Xx"], 1, ["unknown element 'Xx'"]),
    (["md", "--molecule", "NotAMolecule"], 1, ["unknown molecule"]),
    (["md", "{tmp}/polonium.xyz", "--steps", "1"], 1, ["does not know element(s) Po"]),
    (["md", "--bulk", "Cu", "--cubic", "--model", "no-such-model"], 1, ["cannot load model", "no-such-model"]),
    (["md", "--bulk", "Cu", "--ensemble", "nve", "--friction", "0.1"], 2, ["--friction goes with --ensemble langevin"]),
    (["md", "--bulk", "Cu", "--pressure", "1"], 2, ["--pressure goes with --ensemble npt"]),
    (["md", "--molecule", "H2O", "--ensemble", "npt"], 2, ["npt needs a structure periodic"]),
    (["md", "--molecule", "H2O", "--repeat", "2"], 2, ["--repeat needs a periodic structure"]),
    (["md", "{tmp}/garbage.xyz", "--bulk", "Cu"], 2, ["not STRUCTURE and --bulk together"]),
    (["md"], 2, ["give a STRUCTURE file"]),
    (["md", "--molecule", "H2O", "--a", "3"], 2, ["--a goes only with --bulk"]),
    (["relax", "--molecule", "H2O", "--cell"], 2, ["--cell needs a structure periodic"]),
    (["relax", "--bulk", "Cu", "--pressure", "1"], 2, ["--pressure goes with --cell"]),
    (["md", "--bulk", "Cu", "--steps", "-3"], 2, ["--steps", "expected an integer >= 0"]),
    (["md", "--bulk", "Cu", "--ensemble", "nvt"], 2, ["invalid choice"]),
    (["md", "--bulk", "Cu", "--trajectory", "{tmp}/no/such/dir/md.traj"], 1, ["no such directory"]),
    (["md", "--bulk", "Cu", "--trajectory", "{tmp}/POSCAR.vasp"], 2, ["cannot write a series of frames"]),
    (["md", "--bulk", "Cu", "--steps", "1"], 2, ["md needs at least 2 atoms"]),
    (["frobnicate"], 2, ["invalid choice"]),
    ([], 2, ["required"]),
])
def test_errors_are_one_line_without_traceback(bad_files, capsys, args, code, fragments):
    args = [a.replace("{tmp}", str(bad_files)) for a in args]
    exit_code, out, err = run(capsys, *args)
    assert_one_line_error(exit_code, err, code, *fragments)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(cli.CLIError, match="no such file"):
        cli.main(["md", str(tmp_path / "missing.xyz"), "--debug"])


# ---------------------------------------------------------------------------------------------- README


def readme():
    return (REPO / "README.rst").read_text()


def test_readme_test_command_is_what_ci_runs():
    assert "python3 -m pytest -q tests" in readme()
    assert "python3 -m pytest -q tests" in (REPO / ".ci" / "run").read_text()


def test_readme_md_command_runs(tmp_path, capsys, monkeypatch):
    """The install-and-run command of the README, shortened to 2 steps."""
    line = next(line for line in readme().splitlines() if "ase-equivariant md --bulk" in line and "pip install" in line)
    command = shlex.split(line.split("&&")[-1])
    assert command[0] == "ase-equivariant"
    args = command[1:]
    args[args.index("--steps") + 1] = "2"
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *args)
    assert code == 0, err
    trajectory = args[args.index("--trajectory") + 1]
    frames = read(tmp_path / trajectory, ":")
    assert len(frames) == 1 and len(frames[0]) == 27  # frame 0 (interval 10); Cu, 3×3×3 primitive cells


# ---------------------------------------------------------------------------------------------- console script


def console_script():
    """The installed ``ase-equivariant`` next to this Python, or on PATH."""
    here = Path(sys.executable).parent / "ase-equivariant"
    found = str(here) if here.exists() else shutil.which("ase-equivariant")
    if found is None:
        pytest.skip("the ase-equivariant console script is not installed (pip install -e .)")
    return found


def subprocess_env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def test_console_script_runs_md(tmp_path):
    result = subprocess.run([console_script(), "md", "--bulk", "Cu", "--cubic", "--steps", "2", "--interval", "1",
                             "--trajectory", "out.traj", "--seed", "0"],
                            cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "done: 2 steps" in result.stdout
    assert len(read(tmp_path / "out.traj", ":")) == 3


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_console_script_ctrl_c_ends_cleanly(tmp_path):
    """A real SIGINT in the middle of a run: exit code 130, a message, every written frame readable."""
    proc = subprocess.Popen([console_script(), "md", "--bulk", "Cu", "--cubic", "--steps", "100000",
                             "--interval", "1", "--trajectory", "md.traj", "--progress", "0"],
                            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            if re.match(r"step\s+3/", line):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err
    frames = read(tmp_path / "md.traj", ":")
    saved = int(re.search(r"saved (\d+) frames", err).group(1))
    assert len(frames) == saved >= 4  # steps 0..3 at least

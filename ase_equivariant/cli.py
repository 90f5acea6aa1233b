"""The ``ase-equivariant`` command: molecular dynamics, relaxation, a symmetry check and a speed report.

::

    ase-equivariant md STRUCTURE --ensemble langevin --temperature 300 --steps 1000 --trajectory md.traj
    ase-equivariant md --bulk Cu --repeat 3 --ensemble npt --pressure 0 --steps 500 --plot md.png
    ase-equivariant relax STRUCTURE --cell --fmax 0.01 --output relaxed.extxyz
    ase-equivariant check STRUCTURE [--calculator emt]
    ase-equivariant bench

``STRUCTURE`` is any file ASE can read (the last frame of a multi-frame file unless ``--index``
says otherwise), or a structure built on the spot with ``--bulk SYMBOL`` or ``--molecule NAME``,
optionally repeated with ``--repeat``.

Exit codes: 0 success; 1 a run-time error (missing or unreadable file, unknown element, ...) or a
relaxation that did not converge; 2 a usage error (bad option or option combination, a feature not
available); 130 interrupted with Ctrl-C (what was done so far is saved). Errors are printed as one
line on stderr; ``--debug`` shows the traceback instead.
"""
import argparse
import math
import os
import sys
import time
import warnings
from typing import List, Optional, Sequence

import numpy as np

PROG = "ase-equivariant"
#: Ctrl-C exit code (128 + SIGINT), as shells report it
INTERRUPTED = 130


class CLIError(Exception):
    """An error meant for the user: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = 1, prog: Optional[str] = None):
        super().__init__(message)
        self.code, self.prog = code, prog


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (raised as :class:`CLIError`, code 2) instead of usage dumps."""

    def error(self, message):
        raise CLIError(f"{message} (see '{self.prog} --help')", code=2, prog=self.prog)


# ----------------------------------------------------------------------------------------------
# argument types


def _number(text: str, kind=float, minimum=None, strict=False):
    try:
        value = kind(text)
    except ValueError:
        value = None
    ok = value is not None and math.isfinite(value) and (
        minimum is None or (value > minimum if strict else value >= minimum))
    if not ok:
        what = "an integer" if kind is int else "a number"
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise argparse.ArgumentTypeError(f"expected {what}{bound}, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    return _number(text, float, 0, strict=True)


def _nonnegative_float(text: str) -> float:
    return _number(text, float, 0)


def _finite_float(text: str) -> float:
    return _number(text, float)


def _nonnegative_int(text: str) -> int:
    return _number(text, int, 0)


def _positive_int(text: str) -> int:
    return _number(text, int, 1)


def _repeat(text: str):
    """``"3"`` -> (3, 3, 3); ``"2,2,1"`` or ``"2x2x1"`` -> (2, 2, 1)."""
    parts = text.replace("x", ",").split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,M,K (e.g. 3 or 2,2,1), got {text!r}")
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N or N,M,K with positive integers, got {text!r}")
    return values


# ----------------------------------------------------------------------------------------------
# the parser


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model and machine")
    g.add_argument("--model", default="sevennet-0",
                   help="a registered model name or the path of a weight file (default: sevennet-0)")
    g.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    g.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="floating-point precision of the model (default: float32)")
    g.add_argument("--skin", type=_nonnegative_float, default=1.0,
                   help="Verlet skin of the neighbour list in Å; 0 rebuilds it every call (default: 1.0)")
    g.add_argument("--threads", type=_positive_int, default=None,
                   help="number of CPU threads torch uses (default: torch's choice)")
    g.add_argument("--seed", type=int, default=None,
                   help="random seed for initial velocities and Langevin noise (default: a fresh seed, printed); "
                        "a run repeats exactly on the CPU, and on a GPU up to the order of its floating-point sums")
    g.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return common


def _structure_options(parser: argparse.ArgumentParser):
    parser.add_argument("structure", nargs="?", metavar="STRUCTURE",
                        help="a structure file in any format ASE reads (or use --bulk / --molecule)")
    g = parser.add_argument_group("structure")
    g.add_argument("--format", default=None, help="ASE format of STRUCTURE when its name does not tell")
    g.add_argument("--index", default="-1",
                   help="which frame of a multi-frame file, in ASE's index syntax (default: -1, the last)")
    g.add_argument("--bulk", metavar="SYMBOL",
                   help="build a crystal with ase.build.bulk instead, e.g. Cu, Si, or NaCl with --crystal rocksalt --a 5.64")
    g.add_argument("--crystal", default=None,
                   help="crystal structure for --bulk: fcc, bcc, hcp, diamond, rocksalt, ... (default: ASE's reference)")
    g.add_argument("--a", type=_positive_float, default=None,
                   help="lattice constant for --bulk in Å (default: ASE's reference value)")
    g.add_argument("--cubic", action="store_true", help="use the conventional cubic cell for --bulk")
    g.add_argument("--molecule", metavar="NAME",
                   help="build a molecule from ASE's g2 collection instead, e.g. H2O, CH3CH2OH (no cell)")
    g.add_argument("--repeat", type=_repeat, default=None, metavar="N[,M,K]",
                   help="repeat a periodic structure into a supercell, e.g. 3 or 2,2,1")


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = _Parser(
        prog=PROG,
        description="Molecular dynamics, relaxations, symmetry checks and speed reports with a pretrained "
                    "E(3)-equivariant potential (SevenNet-0 by default).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    common = _common_options()

    md = sub.add_parser("md", parents=[common], help="run molecular dynamics",
                        description="Run molecular dynamics (Langevin, NVE or isotropic NPT) and write a trajectory.")
    _structure_options(md)
    g = md.add_argument_group("dynamics")
    g.add_argument("--ensemble", default="langevin", choices=("langevin", "nve", "npt"),
                   help="langevin (NVT), nve (velocity Verlet) or npt (isotropic MTK barostat; default: langevin)")
    g.add_argument("--temperature", type=_nonnegative_float, default=300.0, metavar="K",
                   help="temperature in K: the thermostat target and that of the initial velocities (default: 300)")
    g.add_argument("--timestep", type=_positive_float, default=1.0, metavar="FS",
                   help="time step in fs (default: 1; use 0.5 with hydrogen)")
    g.add_argument("--steps", type=_nonnegative_int, default=100, metavar="N", help="number of steps (default: 100)")
    g.add_argument("--friction", type=_positive_float, default=None, metavar="1/FS",
                   help="Langevin friction in 1/fs (default: 0.01)")
    g.add_argument("--pressure", type=_finite_float, default=None, metavar="GPA",
                   help="NPT target pressure in GPa (default: 0)")
    g.add_argument("--tdamp", type=_positive_float, default=None, metavar="FS",
                   help="NPT thermostat time constant in fs (default: 100 time steps)")
    g.add_argument("--pdamp", type=_positive_float, default=None, metavar="FS",
                   help="NPT barostat time constant in fs (default: 1000 time steps)")
    g.add_argument("--new-velocities", action="store_true",
                   help="draw new Maxwell-Boltzmann velocities even if the input file has momenta")
    g = md.add_argument_group("output")
    g.add_argument("--trajectory", default=None, metavar="FILE",
                   help="trajectory file written as the run goes (.traj, or any format ASE can append to, e.g. .extxyz)")
    g.add_argument("--log", default=None, metavar="FILE", help="ASE MD log file (time, energies, temperature)")
    g.add_argument("--interval", type=_positive_int, default=10, metavar="N",
                   help="write a frame, a log line and a plot point every N steps (default: 10)")
    g.add_argument("--progress", type=_nonnegative_float, default=10.0, metavar="SECONDS",
                   help="print a progress line at most every this many seconds (default: 10)")
    g.add_argument("--plot", default=None, metavar="FILE.png",
                   help="draw energy and temperature against time (needs matplotlib: pip install 'ase-equivariant[plot]')")
    md.set_defaults(func=cmd_md)

    relax = sub.add_parser("relax", parents=[common], help="relax positions (and the cell)",
                           description="Relax atomic positions, and with --cell the cell too (FrechetCellFilter).")
    _structure_options(relax)
    g = relax.add_argument_group("relaxation")
    g.add_argument("--cell", action="store_true", help="relax the cell as well (needs a fully periodic structure)")
    g.add_argument("--pressure", type=_finite_float, default=None, metavar="GPA",
                   help="external pressure in GPa with --cell (default: 0)")
    g.add_argument("--fmax", type=_positive_float, default=0.01, metavar="EV/A",
                   help="convergence criterion on the largest force in eV/Å (default: 0.01)")
    g.add_argument("--steps", type=_nonnegative_int, default=1000, metavar="N",
                   help="give up after this many optimizer steps (default: 1000)")
    g.add_argument("--optimizer", default="BFGS", choices=("BFGS", "LBFGS", "FIRE"), help="(default: BFGS)")
    g.add_argument("--output", default="relaxed.extxyz", metavar="FILE",
                   help="where the relaxed structure goes, with energy, forces and stress (default: relaxed.extxyz)")
    g.add_argument("--trajectory", default=None, metavar="FILE.traj", help="also write every optimizer step")
    g.add_argument("--progress", type=_nonnegative_float, default=10.0, metavar="SECONDS",
                   help="print a progress line at most every this many seconds (default: 10)")
    relax.set_defaults(func=cmd_relax)

    check = sub.add_parser("check", parents=[common], help="measure the symmetry errors of a calculator",
                           description="Print equivariance errors (rotations, inversion, translations, "
                                       "permutations, cell choice) of a calculator on a structure.")
    _structure_options(check)
    check.add_argument("--calculator", default=None, metavar="NAME",
                       help="ASE calculator to check, e.g. emt (default: ours, with --model/--dtype/--device)")
    check.set_defaults(func=cmd_check)

    bench = sub.add_parser("bench", parents=[common], help="a short speed report on this machine",
                           description="Time energy+forces+stress calls and Langevin steps on fcc Cu supercells.")
    bench.add_argument("--repeats", type=_positive_int, nargs="+", default=[2, 3], metavar="N",
                       help="cubic fcc Cu supercells N×N×N of the 4-atom cell: 2 → 32 atoms, 3 → 108 (default: 2 3)")
    bench.add_argument("--calls", type=_positive_int, default=5, metavar="N",
                       help="timed energy+forces+stress calls per size (default: 5)")
    bench.add_argument("--md-steps", type=_nonnegative_int, default=10, metavar="N",
                       help="timed Langevin steps per size (default: 10)")
    bench.set_defaults(func=cmd_bench)
    return parser


# ----------------------------------------------------------------------------------------------
# shared pieces


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = f"unknown name {err.args[0]!r}"
    return text or type(err).__name__


def _say(*args):
    print(*args, flush=True)


def load_structure(args):
    """The structure the options ask for: a file (``args.structure``), ``--bulk`` or ``--molecule``."""
    sources = [name for name, value in (("STRUCTURE", args.structure), ("--bulk", args.bulk),
                                        ("--molecule", args.molecule)) if value]
    if len(sources) != 1:
        raise CLIError("give a STRUCTURE file, or --bulk SYMBOL, or --molecule NAME"
                       + (f" (not {' and '.join(sources)} together)" if sources else ""), code=2)
    builder_only = [opt for opt, value in (("--crystal", args.crystal), ("--a", args.a), ("--cubic", args.cubic))
                    if value]
    if builder_only and not args.bulk:
        raise CLIError(f"{', '.join(builder_only)} {'goes' if len(builder_only) == 1 else 'go'} only with --bulk",
                       code=2)

    if args.bulk:
        atoms = _build_bulk(args)
    elif args.molecule:
        from ase.build import molecule
        if args.repeat:
            raise CLIError("--repeat needs a periodic structure; --molecule builds one without a cell", code=2)
        try:
            atoms = molecule(args.molecule)
        except KeyError:
            raise CLIError(f"unknown molecule {args.molecule!r}: not in ASE's g2 collection "
                           "(e.g. H2O, CH4, CH3CH2OH, C6H6); give a structure file instead")
    else:
        atoms = _read_structure(args.structure, args.index, args.format)

    if args.repeat:
        if not atoms.pbc.all() and not args.bulk:
            raise CLIError(f"--repeat needs a structure periodic in all three directions (pbc={atoms.pbc.tolist()})",
                           code=2)
        atoms = atoms.repeat(args.repeat)
    return atoms


def _build_bulk(args):
    from ase.build import bulk
    from ase.data import chemical_symbols
    from ase.formula import Formula

    try:
        symbols = Formula(args.bulk).count()
    except ValueError:
        symbols = {args.bulk: 1}
    unknown = [s for s in symbols if s not in chemical_symbols[1:]]
    if unknown:
        raise CLIError(f"unknown element {unknown[0]!r} in --bulk {args.bulk}")
    try:
        return bulk(args.bulk, crystalstructure=args.crystal, a=args.a, cubic=args.cubic)
    except (ValueError, KeyError, RuntimeError) as err:
        raise CLIError(f"cannot build --bulk {args.bulk}: {_one_line(err)}"
                       + ("" if args.crystal else " (give --crystal and --a)"))


def _read_structure(path: str, index: str, fmt: Optional[str]):
    from ase import Atoms
    from ase.io import read

    if not os.path.exists(path):
        raise CLIError(f"no such file: {path}")
    if os.path.isdir(path):
        raise CLIError(f"{path} is a directory, not a structure file")
    try:
        atoms = read(path, index=index, format=fmt)
    except Exception as err:
        what = f" as {fmt}" if fmt else ""
        if isinstance(err, KeyError) and len(err.args) == 1:
            reason = f"unknown chemical symbol or key {err.args[0]!r}"
        else:
            reason = _one_line(err)
            if type(err).__name__ == "UnknownFileTypeError":
                reason = f"unknown file type {reason!r} (give --format)"
        raise CLIError(f"cannot read {path}{what}: {reason}")
    if not isinstance(atoms, Atoms):
        raise CLIError(f"--index {index} selects {len(atoms)} frames of {path}; choose one frame", code=2)
    if len(atoms) == 0:
        raise CLIError(f"{path} holds no atoms")
    return atoms


def _describe(atoms) -> str:
    periodic = "".join("xyz"[k] for k in range(3) if atoms.pbc[k])
    text = f"{atoms.get_chemical_formula()} ({len(atoms)} atom{'s' if len(atoms) != 1 else ''}, "
    if atoms.pbc.all():
        lengths = atoms.cell.lengths()
        text += f"periodic, cell {lengths[0]:.3f} × {lengths[1]:.3f} × {lengths[2]:.3f} Å, V {atoms.get_volume():.1f} Å³)"
    elif atoms.pbc.any():
        text += f"periodic along {periodic})"
    else:
        text += "no periodic cell)"
    return text


def make_calculator(args):
    """Our calculator from the common options, with torch's thread count set."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device and str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {args.device}: torch sees no CUDA device on this machine (use --device cpu)")
    from .calculator import EquivariantCalculator
    try:
        return EquivariantCalculator(model=args.model, device=args.device, dtype=args.dtype, skin=args.skin)
    except (ValueError, OSError, RuntimeError) as err:
        raise CLIError(f"cannot load model {args.model!r}: {_one_line(err)}")


def _machine(calc, model: str) -> str:
    import torch
    threads = torch.get_num_threads()
    kernels = ""
    if calc.device.type == "cpu":
        from . import neighbors
        from .nn import native, products, radial_table
        kernels = ", compiled kernels" if native.kernels() is not None else ", pure-torch convolution"
        if neighbors._compiled_search() is None:
            kernels += ", pure-torch neighbour search"
        if products._library() is not None:
            kernels += ", compiled matrix products"
        if str(calc.dtype) == "torch.float32" and radial_table.available():
            kernels += ", radial weights from tables"
    else:
        kernels = ", pure-torch convolution and neighbour search"
    return (f"model {model} ({str(calc.dtype).replace('torch.', '')}, {calc.device}, "
            f"{threads} torch thread{'s' if threads != 1 else ''}{kernels})")


def _seed(args) -> int:
    if args.seed is not None:
        return args.seed
    return int(np.random.SeedSequence().entropy % (2**31))


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _FrameWriter:
    """Appends frames to a trajectory, on disk after every frame (ASE .traj flushes each frame;
    other formats are written through an open file that is flushed each frame)."""

    def __init__(self, path: str, atoms):
        self.path, self.atoms, self.frames = path, atoms, 0
        self._format = self.check(path)
        if self._format is None:
            from ase.io.trajectory import Trajectory
            self._traj, self._fd = Trajectory(path, "w", atoms), None
        else:
            from ase.io.formats import ioformats
            self._traj, self._fd = None, open(path, "wb" if ioformats[self._format].isbinary else "w")

    @staticmethod
    def check(path: str) -> Optional[str]:
        """``None`` for ASE's .traj, else the ASE format name; :class:`CLIError` if ASE cannot write
        a series of frames in that format through an open file."""
        if path.endswith(".traj"):
            return None
        from ase.io.formats import filetype, ioformats
        try:
            name = filetype(path, read=False)
        except Exception as err:
            raise CLIError(f"--trajectory {path}: {_one_line(err)} (use .traj or .extxyz)", code=2)
        fmt = ioformats.get(name)
        if fmt is None or not fmt.can_write or fmt.single or not fmt.acceptsfd:
            raise CLIError(f"--trajectory {path}: ASE cannot write a series of frames as {name} "
                           "(use .traj or .extxyz)", code=2)
        return name

    def write(self):
        if self._traj is not None:
            self._traj.write(self.atoms)
        else:
            from ase.io import write
            write(self._fd, self.atoms, format=self._format)
            self._fd.flush()
        self.frames += 1

    def close(self):
        if self._traj is not None:
            self._traj.close()
        if self._fd is not None:
            self._fd.close()


# ----------------------------------------------------------------------------------------------
# md


def cmd_md(args) -> int:
    from ase import units

    ensemble = args.ensemble
    if args.friction is not None and ensemble != "langevin":
        raise CLIError(f"--friction goes with --ensemble langevin, not {ensemble}", code=2)
    if (args.pressure is not None or args.tdamp or args.pdamp) and ensemble != "npt":
        opts = [o for o, v in (("--pressure", args.pressure is not None), ("--tdamp", args.tdamp),
                               ("--pdamp", args.pdamp)) if v]
        raise CLIError(f"{', '.join(opts)} go{'es' if len(opts) == 1 else ''} with --ensemble npt, not {ensemble}",
                       code=2)
    if ensemble == "langevin" and args.temperature == 0:
        raise CLIError("--ensemble langevin needs --temperature > 0", code=2)
    if args.plot:
        _require_matplotlib()
    if args.trajectory:
        _FrameWriter.check(args.trajectory)
    for option, path in (("--trajectory", args.trajectory), ("--log", args.log), ("--plot", args.plot)):
        if path and os.path.dirname(os.path.abspath(path)) and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise CLIError(f"{option} {path}: no such directory {os.path.dirname(path)}")

    atoms = load_structure(args)
    if ensemble == "npt" and not atoms.pbc.all():
        raise CLIError(f"--ensemble npt needs a structure periodic in all three directions (pbc={atoms.pbc.tolist()})",
                       code=2)
    if len(atoms) < 2:
        raise CLIError(f"md needs at least 2 atoms (the centre of mass stays fixed), got {len(atoms)}; "
                       "use --repeat or --cubic", code=2)
    calc = make_calculator(args)
    atoms.calc = calc
    seed = _seed(args)
    rng = np.random.default_rng(seed)

    dt = args.timestep * units.fs
    friction = 0.01 if args.friction is None else args.friction
    pressure = 0.0 if args.pressure is None else args.pressure
    tdamp = args.tdamp or 100 * args.timestep
    pdamp = args.pdamp or 1000 * args.timestep
    detail = {"langevin": f"Langevin at {args.temperature:g} K, friction {friction:g}/fs",
              "nve": "NVE (velocity Verlet)",
              "npt": f"NPT at {args.temperature:g} K and {pressure:g} GPa (isotropic MTK, tdamp {tdamp:g} fs, "
                     f"pdamp {pdamp:g} fs)"}[ensemble]
    _say(f"{PROG} md: {_describe(atoms)}")
    _say(f"  {detail}; time step {args.timestep:g} fs, {args.steps} steps "
         f"({args.steps * args.timestep / 1000:g} ps)")
    _say(f"  {_machine(calc, args.model)}, seed {seed}")

    epot0 = atoms.get_potential_energy()  # fails here, before any output is written, on bad input
    has_momenta = atoms.has("momenta") and np.abs(atoms.get_momenta()).max() > 0
    if has_momenta and not args.new_velocities:
        _say(f"  starting from the momenta stored in the input (T {atoms.get_temperature():.1f} K)")
    else:
        from ase.md.velocitydistribution import Stationary, ZeroRotation
        _thermalize_momenta()(atoms, temperature_K=args.temperature, rng=rng)
        Stationary(atoms, preserve_temperature=False)
        if not atoms.pbc.any():
            ZeroRotation(atoms, preserve_temperature=False)
        if atoms.get_temperature() > 0:  # start at the target temperature, not at a random draw near it
            atoms.set_momenta(atoms.get_momenta() * math.sqrt(args.temperature / atoms.get_temperature()))
    _say(f"  initial Epot {epot0:.4f} eV, T {atoms.get_temperature():.1f} K")

    if ensemble == "langevin":
        from ase.md.langevin import Langevin
        from ase.constraints import FixCom
        if not atoms.constraints:  # the centre of mass stays put (ASE's replacement for fixcm=True)
            atoms.set_constraint(FixCom())
        dyn = Langevin(atoms, dt, temperature_K=args.temperature, friction=friction / units.fs, fixcm=False,
                       rng=rng)
    elif ensemble == "nve":
        from ase.md.verlet import VelocityVerlet
        dyn = VelocityVerlet(atoms, dt)
    else:
        from ase.md.nose_hoover_chain import IsotropicMTKNPT
        dyn = IsotropicMTKNPT(atoms, dt, temperature_K=args.temperature, pressure_au=pressure * units.GPa,
                              tdamp=tdamp * units.fs, pdamp=pdamp * units.fs)

    writer = logger = None
    samples: List[tuple] = []
    try:
        if args.trajectory:
            writer = _FrameWriter(args.trajectory, atoms)
            dyn.attach(writer.write, interval=args.interval)
        if args.log:
            from ase.md import MDLogger
            logger = MDLogger(dyn, atoms, args.log, header=True, stress=ensemble == "npt", peratom=False, mode="w")
            dyn.attach(logger, interval=args.interval)

        def sample():
            epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
            volume = atoms.get_volume() if atoms.pbc.all() else float("nan")
            samples.append((dyn.get_time() / (1000 * units.fs), epot, epot + ekin, atoms.get_temperature(), volume))

        dyn.attach(sample, interval=args.interval)
        progress = _MDProgress(dyn, atoms, args.steps, args.progress, ensemble == "npt")
        dyn.attach(progress, interval=1)

        interrupted = False
        try:
            dyn.run(args.steps)
        except KeyboardInterrupt:
            interrupted = True
    finally:
        if writer is not None:
            writer.close()
        if logger is not None:
            logger.close()

    done = dyn.nsteps
    elapsed = time.perf_counter() - progress.start
    temps = np.array([s[3] for s in samples])
    outputs = []
    if writer is not None:
        outputs.append(f"{writer.frames} frames in {args.trajectory}")
    if args.log:
        outputs.append(f"log in {args.log}")
    if args.plot:
        _plot_md(args.plot, samples, args.temperature if ensemble != "nve" else None,
                 f"{atoms.get_chemical_formula()}, {ensemble}", volume=ensemble == "npt")
        outputs.append(f"plot in {args.plot}")
    summary = (f"{done} steps in {elapsed:.1f} s ({done / elapsed if elapsed > 0 else float('nan'):.2f} steps/s); "
               f"final Epot {atoms.get_potential_energy():.4f} eV, T {atoms.get_temperature():.1f} K"
               + (f", mean T {temps.mean():.1f} K" if len(temps) > 1 else ""))
    if ensemble == "nve" and len(samples) > 1:
        etot = np.array([s[2] for s in samples])
        summary += f"; total-energy drift {1000 * (etot[-1] - etot[0]) / len(atoms):+.3f} meV/atom"
    if interrupted:
        print(f"{PROG} md: interrupted (Ctrl-C) after {done} of {args.steps} steps; "
              + (f"saved {', '.join(outputs)}" if outputs else "no output files were asked for"), file=sys.stderr,
              flush=True)
        _say(f"stopped: {summary}")
        return INTERRUPTED
    _say(f"done: {summary}")
    if outputs:
        _say("wrote " + "; ".join(outputs))
    return 0


def _thermalize_momenta():
    """ASE's Maxwell-Boltzmann velocities: ``thermalize_momenta`` (ASE >= 3.29) or its older name."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    return thermalize_momenta


class _MDProgress:
    """Prints a progress line after the first step, then at most every ``every`` seconds, and at the end."""

    def __init__(self, dyn, atoms, steps, every, npt):
        self.dyn, self.atoms, self.steps, self.every, self.npt = dyn, atoms, steps, every, npt
        self.start = time.perf_counter()
        self.last = None

    def __call__(self):
        step = self.dyn.nsteps
        if step == 0:
            self.start = time.perf_counter()
            return
        now = time.perf_counter()
        if self.last is not None and now - self.last < self.every and step != self.steps:
            return
        self.last = now
        rate = step / (now - self.start) if now > self.start else float("nan")
        eta = (self.steps - step) / rate if rate > 0 else float("nan")
        atoms = self.atoms
        epot = atoms.get_potential_energy()
        line = (f"step {step:>{len(str(self.steps))}}/{self.steps} {100 * step / max(self.steps, 1):3.0f}%  "
                f"{rate:6.2f} steps/s  ETA {_hms(eta)}  T {atoms.get_temperature():7.1f} K  "
                f"Epot {epot:.4f} eV  Etot {epot + atoms.get_kinetic_energy():.4f} eV")
        if self.npt:
            from ase import units
            pressure = -np.mean(atoms.get_stress(include_ideal_gas=True)[:3]) / units.GPa
            line += f"  V {atoms.get_volume():.2f} Å³  P {pressure:+.3f} GPa"
        _say(line)


def _require_matplotlib():
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        raise CLIError("--plot needs matplotlib: pip install matplotlib (or pip install 'ase-equivariant[plot]')",
                       code=2)


def _plot_md(path, samples, target_temperature, title, volume=False):
    """Energy and temperature (and volume) against time, written to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = np.array(samples, dtype=float).reshape(-1, 5)
    t, epot, etot, temp, vol = data.T
    fig = Figure(figsize=(7, 7 if volume else 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3 if volume else 2, 1, sharex=True)
    axes[0].plot(t, epot, ".-", label="potential")
    axes[0].plot(t, etot, ".-", label="total")
    axes[0].set_ylabel("energy (eV)")
    axes[0].legend(loc="best")
    axes[0].set_title(title)
    axes[1].plot(t, temp, ".-", color="C3")
    if target_temperature is not None:
        axes[1].axhline(target_temperature, color="k", lw=0.8, ls="--", label=f"target {target_temperature:g} K")
        axes[1].legend(loc="best")
    axes[1].set_ylabel("temperature (K)")
    if volume:
        axes[2].plot(t, vol, ".-", color="C2")
        axes[2].set_ylabel("volume (Å³)")
    axes[-1].set_xlabel("time (ps)")
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as err:
        raise CLIError(f"--plot {path}: {_one_line(err)}")


# ----------------------------------------------------------------------------------------------
# relax


def cmd_relax(args) -> int:
    from ase import units
    from ase.optimize import BFGS, FIRE, LBFGS

    if args.pressure is not None and not args.cell:
        raise CLIError("--pressure goes with --cell", code=2)
    atoms = load_structure(args)
    if args.cell and not atoms.pbc.all():
        raise CLIError(f"--cell needs a structure periodic in all three directions (pbc={atoms.pbc.tolist()})",
                       code=2)
    calc = make_calculator(args)
    atoms.calc = calc
    _say(f"{PROG} relax: {_describe(atoms)}")
    _say(f"  {args.optimizer}{' with FrechetCellFilter' if args.cell else ''}, fmax {args.fmax:g} eV/Å"
         + (f", pressure {args.pressure or 0:g} GPa" if args.cell else "") + f"; {_machine(calc, args.model)}")
    epot0, volume0 = atoms.get_potential_energy(), atoms.get_volume() if atoms.pbc.all() else None
    _say(f"  initial Epot {epot0:.4f} eV, max force {_max_force(atoms):.4f} eV/Å")

    if args.cell:
        from ase.filters import FrechetCellFilter
        target = FrechetCellFilter(atoms, scalar_pressure=(args.pressure or 0.0) * units.GPa)
    else:
        target = atoms
    optimizer = {"BFGS": BFGS, "LBFGS": LBFGS, "FIRE": FIRE}[args.optimizer]
    opt = optimizer(target, logfile=None, trajectory=args.trajectory)
    start, last = time.perf_counter(), [time.perf_counter()]

    def progress():
        now = time.perf_counter()
        if opt.nsteps and now - last[0] >= args.progress:
            last[0] = now
            _say(f"step {opt.nsteps:4d}  Epot {atoms.get_potential_energy():.4f} eV  "
                 f"max force {_max_force(atoms):.4f} eV/Å  ({opt.nsteps / (now - start):.2f} steps/s)")

    opt.attach(progress, interval=1)
    interrupted = False
    try:
        with warnings.catch_warnings():
            # FrechetCellFilter's matrix logarithm: scipy warns at every step about ~1e-12 errors
            warnings.filterwarnings("ignore", message="logm result may be inaccurate")
            converged = bool(opt.run(fmax=args.fmax, steps=args.steps))
    except KeyboardInterrupt:
        interrupted, converged = True, False
    finally:
        if args.trajectory and getattr(opt, "trajectory", None) is not None and hasattr(opt.trajectory, "close"):
            opt.trajectory.close()

    atoms.get_potential_energy()  # results of the final structure (cached unless interrupted mid-step)
    atoms.info.update(relax_converged=converged, relax_steps=int(opt.nsteps), relax_fmax=args.fmax)
    _write_structure(args.output, atoms)
    epot, fmax = atoms.get_potential_energy(), _max_force(atoms)
    summary = f"Epot {epot:.4f} eV (change {epot - epot0:+.4f} eV), max force {fmax:.4f} eV/Å"
    if args.cell:
        stress = atoms.get_stress() / units.GPa
        lengths, angles = atoms.cell.cellpar()[:3], atoms.cell.cellpar()[3:]
        summary += (f", max stress {np.abs(stress).max():.4f} GPa; V {volume0:.2f} → {atoms.get_volume():.2f} Å³ "
                    f"({100 * (atoms.get_volume() / volume0 - 1):+.2f}%), cell {lengths[0]:.4f} {lengths[1]:.4f} "
                    f"{lengths[2]:.4f} Å, angles {angles[0]:.2f} {angles[1]:.2f} {angles[2]:.2f}°")
    elapsed = time.perf_counter() - start
    if interrupted:
        print(f"{PROG} relax: interrupted (Ctrl-C) after {opt.nsteps} steps; the last structure is in {args.output}",
              file=sys.stderr, flush=True)
        _say(f"stopped: {summary}")
        return INTERRUPTED
    if not converged:
        print(f"{PROG} relax: not converged after {opt.nsteps} steps (max force {fmax:.4f} > fmax {args.fmax:g} "
              f"eV/Å); the last structure is in {args.output}", file=sys.stderr, flush=True)
        _say(f"stopped: {summary}")
        return 1
    _say(f"converged in {opt.nsteps} steps ({elapsed:.1f} s): {summary}")
    _say(f"wrote {args.output}")
    return 0


def _max_force(atoms) -> float:
    forces = atoms.get_forces()
    return float(np.sqrt((forces**2).sum(axis=1)).max()) if len(forces) else 0.0


def _write_structure(path, atoms):
    from ase.io import write
    try:
        write(path, atoms)
    except Exception as err:
        raise CLIError(f"cannot write {path}: {_one_line(err)}")


# ----------------------------------------------------------------------------------------------
# check

OUR_CALCULATOR_NAMES = ("ase-equivariant", "ase_equivariant", "equivariant", "ours")


def cmd_check(args) -> int:
    import importlib
    import importlib.util

    if importlib.util.find_spec("ase_equivariant.symmetry") is None:
        raise CLIError("the symmetry check is not available yet in this version of ase-equivariant "
                       "(ase_equivariant.symmetry is missing)", code=2)
    symmetry = importlib.import_module("ase_equivariant.symmetry")
    atoms = load_structure(args)
    from .models import MODELS

    if args.calculator is None or args.calculator.lower() in OUR_CALCULATOR_NAMES + tuple(MODELS):
        if args.calculator is not None and args.calculator.lower() in MODELS:
            args.model = args.calculator.lower()
        calc = make_calculator(args)
        label = f"ase-equivariant {args.model} ({args.dtype})"
    else:
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        try:
            calc = symmetry.calculator_by_name(args.calculator)
        except (KeyError, ValueError, ImportError) as err:
            raise CLIError(f"--calculator {args.calculator}: {_one_line(err)}")
        label = args.calculator
    _say(f"{PROG} check: {_describe(atoms)}; calculator {label}")
    kwargs = {}
    if args.seed is not None:
        import inspect
        params = inspect.signature(symmetry.check_report).parameters.values()
        if any(p.name == "seed" or p.kind is p.VAR_KEYWORD for p in params):
            kwargs["seed"] = args.seed
    _say(symmetry.check_report(calc, atoms, **kwargs))
    return 0


# ----------------------------------------------------------------------------------------------
# bench


def cmd_bench(args) -> int:
    import platform

    import ase
    import torch
    from ase.build import bulk
    from ase.calculators.calculator import all_changes
    from ase.md.langevin import Langevin
    from ase.neighborlist import neighbor_list
    from ase import units

    from ._version import __version__

    calc = make_calculator(args)
    rng = np.random.default_rng(_seed(args))
    _say(f"{PROG} {__version__} bench: {_machine(calc, args.model)}")
    _say(f"  torch {torch.__version__}, ase {ase.__version__}, numpy {np.__version__}, python "
         f"{platform.python_version()}; CPU: {_cpu_name()} ({os.cpu_count()} logical cores)")
    _say(f"  fcc Cu at 3.61 Å, rattled 0.05 Å; each call computes energy, forces and stress "
         f"(skin {args.skin:g} Å, neighbour list reused as in MD)")
    columns = (("atoms", 6), ("neighbours", 10), ("first call", 11), ("per call", 10), ("± sd", 9),
               ("per atom", 9), ("MD steps/s", 11))
    header = " ".join(f"{name:>{width}}" for name, width in columns)
    _say(header)
    _say(" ".join(f"{'(per atom)' if name == 'neighbours' else '':>{width}}" for name, width in columns).rstrip())
    for n in args.repeats:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n)
        atoms.rattle(0.05, rng=rng)
        neighbours = len(neighbor_list("i", atoms, float(calc.model.cutoff))) / len(atoms)
        atoms.calc = calc
        t0 = time.perf_counter()
        calc.calculate(atoms, ["energy", "forces", "stress"], all_changes)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.calls):
            atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
            t0 = time.perf_counter()
            calc.calculate(atoms, ["energy", "forces", "stress"], all_changes)
            times.append(time.perf_counter() - t0)
        times = np.array(times)
        rate = float("nan")
        if args.md_steps:
            _thermalize_momenta()(atoms, temperature_K=300, rng=rng)
            dyn = Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.01 / units.fs, fixcm=False, rng=rng)
            t0 = time.perf_counter()
            dyn.run(args.md_steps)
            rate = args.md_steps / (time.perf_counter() - t0)
        sd = times.std(ddof=1) if len(times) > 1 else 0.0
        cells = (f"{len(atoms)}", f"{neighbours:.1f}", f"{first:.3f} s", f"{times.mean():.4f} s", f"{sd:.4f} s",
                 f"{1000 * times.mean() / len(atoms):.2f} ms", f"{rate:.2f}")
        _say(" ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, columns)))
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fd:
            for line in fd:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine() or "unknown"


# ----------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except CLIError as err:
        print(f"{err.prog or PROG}: error: {err}", file=sys.stderr)
        return err.code
    except SystemExit as exit:  # --help, --version
        return exit.code if isinstance(exit.code, int) else 0
    prog = f"{PROG} {args.command}"
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        if args.debug:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        return err.code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        return INTERRUPTED
    except Exception as err:
        if args.debug:
            raise
        hint = "" if isinstance(err, (ValueError, OSError)) else " (run with --debug for the traceback)"
        print(f"{prog}: error: {_one_line(err)}{hint}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())

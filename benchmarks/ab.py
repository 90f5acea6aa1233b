"""A/B timing of two versions of our code: the working tree against a git revision.

On a shared or noisy machine, timings of the same code move by ±15-40 % from one run to the next,
so a change can only be judged against its baseline measured in the same stretch of time. This
script extracts ``BASELINE`` (any git revision) into a temporary folder and times both versions
in alternating fresh processes (order swapped every round), each call an energy + forces + stress
evaluation of a fresh geometry with SevenNet-0 (``model.py``'s structures and calls, ``skin=0``).
It prints, per structure, the minimum and median over all rounds and the speed-up
``baseline / working tree`` of both.

With ``--in-process`` both versions run in this one process instead: the baseline's package is
imported under the name ``ase_equivariant_baseline`` (its imports are relative, so it loads its
own modules; the SevenNet-0 weights come from the working tree's ``data/``), one calculator
each, and every round times ``--calls`` calls of each version in turn after one untimed call.
Rounds then take seconds, not a process start each, so many more fit into the same stretch of
the VM's speed: on 2026-12-03 this resolved changes of a few percent that the process mode
could not (its results moved 5-15 % from process to process).

    python benchmarks/ab.py HEAD                      # uncommitted changes against the last commit
    python benchmarks/ab.py HEAD~3 --sizes 108 864 --rounds 4 --calls 5
    python benchmarks/ab.py HEAD --in-process --sizes 108 864 --rounds 12 --calls 3
"""
import argparse
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(sizes, calls, dtype):
    """Time the ``ase_equivariant`` found first on ``sys.path``; print JSON ``{name: [seconds]}``."""
    import ase_equivariant
    from ase_equivariant import EquivariantCalculator
    from model import evaluate, structures

    calc = EquivariantCalculator(device="cpu", dtype=dtype, skin=0.0)
    times = {}
    for name, atoms in structures(sizes).items():
        evaluate(calc, atoms, "cpu")  # warm-up
        times[name] = [len(atoms)] + [evaluate(calc, atoms, "cpu") for _ in range(calls)]
    print(json.dumps({"package": ase_equivariant.__file__, "times": times}))


def extract(revision: str, folder: str) -> Path:
    """The tree of ``revision`` written into ``folder``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return Path(folder)


def run(source: Path, args):
    command = [sys.executable, __file__, "--worker", "--calls", str(args.calls), "--dtype", args.dtype]
    if args.sizes:
        command += ["--sizes", *map(str, args.sizes)]
    env = dict(os.environ, PYTHONPATH=str(source))
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if not result["package"].startswith(str(source)):
        raise RuntimeError(f"timed {result['package']}, not the code in {source}")
    return result["times"]


def load_baseline(source: Path):
    """The package in ``source / "ase_equivariant"``, imported as ``ase_equivariant_baseline``."""
    name = "ase_equivariant_baseline"
    folder = source / "ase_equivariant"
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return package


def in_process(source: Path, args):
    """Both versions in this process, alternated call block by call block: ``{key: {name: (atoms, [s])}}``."""
    import ase_equivariant
    from model import evaluate, structures

    packages = {"baseline": load_baseline(source), "working": ase_equivariant}
    for key, package in packages.items():
        expected = source if key == "baseline" else ROOT
        if not package.__file__.startswith(str(expected)):
            raise RuntimeError(f"{key}: loaded {package.__file__}, not the code in {expected}")
    calcs = {key: package.EquivariantCalculator(device="cpu", dtype=args.dtype, skin=0.0)
             for key, package in packages.items()}
    times = {key: {} for key in calcs}
    for name, atoms in structures(args.sizes).items():
        for r in range(args.rounds):
            order = list(calcs) if r % 2 == 0 else list(calcs)[::-1]
            for key in order:
                evaluate(calcs[key], atoms, "cpu")  # untimed: the other version ran last
                seconds = [evaluate(calcs[key], atoms, "cpu") for _ in range(args.calls)]
                times[key].setdefault(name, (len(atoms), []))[1].extend(seconds)
        print(f"# {name} done", file=sys.stderr, flush=True)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", nargs="?", default="HEAD", help="git revision to compare against")
    parser.add_argument("--sizes", type=int, nargs="*", help="Cu fcc cells of about these many atoms")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per version")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per structure and process")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--in-process", action="store_true",
                        help="both versions in this process, alternated round by round")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.sizes, args.calls, args.dtype)

    with tempfile.TemporaryDirectory() as folder:
        if args.in_process:
            times = in_process(extract(args.baseline, folder), args)
        else:
            versions = {"baseline": extract(args.baseline, folder), "working": ROOT}
            times = {key: {} for key in versions}
            for r in range(args.rounds):
                order = list(versions) if r % 2 == 0 else list(versions)[::-1]
                for key in order:
                    for name, (atoms, *seconds) in run(versions[key], args).items():
                        times[key].setdefault(name, (atoms, []))[1].extend(seconds)
                print(f"# round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    how = "rounds in one process" if args.in_process else "processes"
    print(f"# baseline {args.baseline} against the working tree; {args.rounds} {how} x "
          f"{args.calls} calls each, {args.dtype}, ms per call")
    print(f"{'system':>8} {'atoms':>6} {'base min':>9} {'median':>8} {'work min':>9} {'median':>8} "
          f"{'speed-up min':>12} {'median':>7}")
    for name, (atoms, base) in times["baseline"].items():
        work = times["working"][name][1]
        print(f"{name:>8} {atoms:>6} {1e3 * min(base):>9.1f} {1e3 * statistics.median(base):>8.1f} "
              f"{1e3 * min(work):>9.1f} {1e3 * statistics.median(work):>8.1f} "
              f"{min(base) / min(work):>11.2f}x {statistics.median(base) / statistics.median(work):>6.2f}x")


if __name__ == "__main__":
    main()

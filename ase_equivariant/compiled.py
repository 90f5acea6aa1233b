"""Building and caching the package's C sources (the convolution's message sums, the cell list).

Each C file needs no Python or torch headers: it is compiled once per machine and processor
(``-march=native``, OpenMP) with the C compiler Python was built with (``$CC`` overrides it) into
a cache folder (``$ASE_EQUIVARIANT_CACHE``, else ``$XDG_CACHE_HOME/ase-equivariant``, else
``~/.cache/ase-equivariant``), which takes about a second, and loaded with ctypes (which releases
the GIL during each call). ``ASE_EQUIVARIANT_NATIVE=0`` switches every compiled path off; the
callers then use their pure-torch paths, which compute the same results.
"""
import hashlib
import os
import platform
import shlex
import subprocess
import sysconfig
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional, TypeVar

Library = TypeVar("Library")

#: flags for the build, tried in order until the compiler accepts a set
FLAGS = (["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"], ["-O3", "-ffp-contract=fast", "-fopenmp"],
         ["-O3"])


def enabled() -> bool:
    """False when ``ASE_EQUIVARIANT_NATIVE=0`` asks for the pure-torch paths."""
    return os.environ.get("ASE_EQUIVARIANT_NATIVE", "1") != "0"


def _cache_dir() -> Path:
    if os.environ.get("ASE_EQUIVARIANT_CACHE"):
        return Path(os.environ["ASE_EQUIVARIANT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ase-equivariant"


def _compiler():
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")


def _machine_id() -> str:
    """What a ``-march=native`` build depends on: the processor's name and features."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()} {cpu}"


def build(target: Path, source: Path):
    """Compile ``source`` into the shared library ``target`` (atomically: built in a temporary
    file of the same folder, then renamed). Raises ``RuntimeError`` with the compiler's message."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in FLAGS:
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
            partial = Path(tmp.name)
        command = _compiler() + flags + ["-std=gnu99", "-fPIC", "-shared", str(source), "-o", str(partial), "-lm"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as error:
            result = None
            errors.append(f"{shlex.join(command)}: {error}")
        if result is not None and result.returncode == 0:
            os.replace(partial, target)
            return
        if result is not None:
            errors.append(f"{shlex.join(command)}: {result.stderr.strip()[-2000:]}")
        partial.unlink(missing_ok=True)
    raise RuntimeError(f"could not compile {source.name}:\n" + "\n".join(errors))


def library(source: Path) -> Optional[Path]:
    """The shared library built from ``source``, compiled now unless the cache holds it; ``None``
    when switched off (:func:`enabled`). Raises ``RuntimeError`` when it cannot be compiled."""
    if not enabled():
        return None
    key = hashlib.sha256(source.read_bytes() + "\0".join(map(str, (_compiler(), FLAGS, _machine_id()))).encode())
    target = _cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if not target.exists():
        build(target, source)
    return target


def load(source: Path, wrap: Callable[[Path], Library], fallback: str) -> Optional[Library]:
    """``wrap(path)`` of the library built from ``source`` (see :func:`library`); ``None`` when
    switched off, or when it cannot be built or loaded here, which a ``RuntimeWarning`` says,
    naming the ``fallback`` that runs instead."""
    try:
        path = library(source)
        return None if path is None else wrap(path)
    except (OSError, RuntimeError) as error:
        warnings.warn(f"ase_equivariant: using the slower {fallback} ({error})", RuntimeWarning)
        return None

r"""Equivariance diagnostics and symmetrised predictions for any ASE calculator.

Everything here talks to the wrapped calculator through the public ASE API only (``atoms.copy()``,
``atoms.calc = calc``, ``get_potential_energy``/``get_forces``/``get_stress``), so it works for our
:class:`~ase_equivariant.EquivariantCalculator`, for EMT, or for a non-equivariant potential.

Conventions (ASE units: Å, eV, eV/Å, eV/Å³). Positions and cell vectors are rows. An orthogonal
``g`` (3, 3), proper or improper, acts on a structure as ``positions -> positions @ g.T`` and
``cell -> cell @ R.T`` with ``R = det(g) g`` its proper part: the lattice is centrosymmetric, so the
cell of ``-R x`` may be chosen as that of ``R x`` and stays right-handed. A prediction on ``g·x``
is brought back to the frame of ``x`` by

- energy: unchanged;
- forces ``F'`` (N, 3): ``F' @ g`` (``g.T`` applied to each atom's force);
- stress ``S'`` (3, 3): ``g.T @ S' @ g``;
- for a permutation ``atoms[perm]``: per-atom rows are put back in the original order.

An exactly equivariant calculator then returns the same back-transformed prediction for every
group element; the diagnostics below measure how far they spread.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .o3 import random_rotation

#: properties ``equivariance_error`` can measure, and the unit of each figure
UNITS = {"energy": "eV/atom", "forces": "eV/Å", "stress": "eV/Å³"}

#: symmetry classes ``equivariance_error`` can measure
SYMMETRIES = ("rotation", "inversion", "translation", "permutation", "cell")

#: one group element: (transformed structure, orthogonal g (3, 3), permutation to undo or None)
Sample = Tuple[Atoms, np.ndarray, Optional[np.ndarray]]


def rotation_quadrature(l_max: int) -> Tuple[np.ndarray, np.ndarray]:
    r"""A quadrature on SO(3) exact for band-limited functions up to degree ``l_max``.

    Returns ``(rotations, weights)``: ``rotations`` (K, 3, 3) proper rotation matrices and
    ``weights`` (K,) positive, summing to 1, such that
    :math:`\sum_k w_k D^l(R_k) = \delta_{l0}` for every :math:`l \le l_{max}`. Hence
    :math:`\sum_k w_k f(R_k)` equals the Haar average :math:`\int_{SO(3)} f(R)\,dR` for every ``f``
    whose Wigner-D expansion stops at degree ``l_max`` (e.g. ``R -> E(R x)`` for an energy that is a
    polynomial of degree ``l_max`` in the positions), and ``f(R_k)`` contributes its degree
    ``> l_max`` content only through aliasing.

    The grid is a Gauss-Legendre(β) × uniform(α) × uniform(γ) product in ZYZ Euler angles,
    ``R = Rz(α) Ry(β) Rz(γ)``: ``n = l_max + 1`` uniform angles ``α, γ = 2πk/n`` and the
    ``p = ceil((l_max + 1)/2)`` Gauss-Legendre nodes in ``cos β``, so ``K = n² p``
    (18 for ``l_max = 2``, 75 for ``l_max = 4``). Exactness: in
    :math:`D^l_{mm'} = e^{-im\alpha} d^l_{mm'}(\beta) e^{-im'\gamma}` the uniform sums remove every
    ``0 < |m|, |m'| < n``, leaving :math:`d^l_{00}(\beta) = P_l(\cos\beta)`, a polynomial of degree
    ``l`` in ``cos β`` that ``p`` Gauss-Legendre nodes integrate exactly for ``l <= 2p - 1``.
    (A Lebedev rule × in-plane angles, ``scipy.integrate.lebedev_rule``, needs about 2/3 of the
    points but scipy >= 1.15 and exists only for some orders; this grid needs numpy alone.)
    """
    if int(l_max) != l_max or l_max < 0:
        raise ValueError(f"l_max must be a non-negative integer, got {l_max!r}")
    n, p = int(l_max) + 1, (int(l_max) + 2) // 2
    cos_beta, beta_weights = np.polynomial.legendre.leggauss(p)
    angles = 2 * np.pi * np.arange(n) / n
    alpha, cb, gamma = (a.ravel() for a in np.meshgrid(angles, cos_beta, angles, indexing="ij"))
    weights = np.broadcast_to(beta_weights[None, :, None], (n, p, n)).ravel() / (2 * n * n)
    return _rz(alpha) @ _ry(cb) @ _rz(gamma), weights


def _rz(angle: np.ndarray) -> np.ndarray:
    """Rotations about z by ``angle`` (K,): (K, 3, 3)."""
    c, s, o, i = np.cos(angle), np.sin(angle), np.zeros_like(angle), np.ones_like(angle)
    return np.stack([np.stack([c, -s, o], -1), np.stack([s, c, o], -1), np.stack([o, o, i], -1)], -2)


def _ry(cos_angle: np.ndarray) -> np.ndarray:
    """Rotations about y by ``arccos(cos_angle)`` (K,): (K, 3, 3)."""
    c, s = cos_angle, np.sqrt(1 - cos_angle**2)
    o, i = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, o, s], -1), np.stack([o, i, o], -1), np.stack([-s, o, c], -1)], -2)


def _copy(atoms: Atoms) -> Atoms:
    """A copy without calculator or constraints (constraints would alter the forces read back)."""
    image = atoms.copy()
    image.set_constraint()
    return image


def _rotated(atoms: Atoms, g: np.ndarray) -> Atoms:
    """``g·atoms`` for an orthogonal ``g`` (3, 3); the cell follows the proper part of ``g``."""
    image = _copy(atoms)
    image.set_cell(atoms.cell.array @ (np.sign(np.linalg.det(g)) * g).T)
    image.positions = atoms.positions @ g.T
    return image


def _back_transformed(calc: Calculator, samples: Sequence[Sample], properties: Sequence[str]) -> Dict[str, np.ndarray]:
    """Predict ``properties`` with ``calc`` on every sample and bring them back to the frame of the
    original structure. Returns ``{property: (K, ...)}``: energy (K,) in eV, forces (K, N, 3) in eV/Å,
    stress (K, 3, 3) in eV/Å³, K = ``len(samples)``."""
    values: Dict[str, List[np.ndarray]] = {p: [] for p in properties}
    for image, g, perm in samples:
        image.calc = calc
        inverse = slice(None) if perm is None else np.argsort(perm)
        for p in properties:
            if p == "energy":
                values[p].append(np.asarray(image.get_potential_energy()))
            elif p == "forces":
                values[p].append(image.get_forces()[inverse] @ g)
            else:  # stress
                values[p].append(g.T @ image.get_stress(voigt=False) @ g)
    return {p: np.stack(v) for p, v in values.items()}


def _mean_and_spread(values: np.ndarray, weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Weighted mean over the group elements (axis 0 of ``values``) and the elementwise spread
    ``sqrt(sum_k w_k (y_k - mean)²)``; both of shape ``values.shape[1:]``."""
    mean = np.tensordot(weights, values, axes=1)
    return mean, np.sqrt(np.tensordot(weights, (values - mean) ** 2, axes=1))


def _figures(values: Dict[str, np.ndarray], weights: np.ndarray, n_atoms: int) -> Dict[str, float]:
    """RMS over components of the spread of each property (energy divided by ``n_atoms``)."""
    out = {}
    for p, v in values.items():
        spread = _mean_and_spread(v / n_atoms if p == "energy" else v, weights)[1]
        out[p] = float(np.sqrt(np.mean(spread**2)))
    return out


def _translations(atoms: Atoms, rng: np.random.Generator, count: int, max_translation: float) -> List[Sample]:
    """``count`` rigid shifts uniform in ``[-max_translation, max_translation]³`` Å (not wrapped)."""
    samples = []
    for t in rng.uniform(-max_translation, max_translation, size=(count, 3)):
        image = _copy(atoms)
        image.positions += t
        samples.append((image, np.eye(3), None))
    return samples


def _permutations(atoms: Atoms, rng: np.random.Generator, count: int) -> List[Sample]:
    """``count`` random permutations among atoms of the same element; none if all elements differ."""
    if len(np.unique(atoms.numbers)) == len(atoms):
        return []
    samples = []
    for _ in range(count):
        perm = np.arange(len(atoms))
        for z in np.unique(atoms.numbers):
            same = np.flatnonzero(atoms.numbers == z)
            perm[same] = rng.permutation(same)
        samples.append((_copy(atoms)[perm], np.eye(3), perm))
    return samples


def _cell_choices(atoms: Atoms, rng: np.random.Generator, count: int) -> List[Sample]:
    """``count`` equivalent descriptions of a periodic system: each atom moved by a lattice vector
    with components in {-1, 0, 1} along periodic axes, and (with two or more periodic axes) the
    cell changed by two unimodular shears ``a_i -> a_i ± a_j``. None for a non-periodic system."""
    periodic = np.flatnonzero(atoms.pbc)
    if len(periodic) == 0:
        return []
    samples = []
    for _ in range(count):
        change = np.eye(3, dtype=int)
        if len(periodic) >= 2:
            for _ in range(2):
                i, j = rng.choice(periodic, size=2, replace=False)
                change[i] += rng.choice([-1, 1]) * change[j]
        image = _copy(atoms)
        image.positions += (rng.integers(-1, 2, size=(len(atoms), 3)) * atoms.pbc) @ atoms.cell.array
        image.set_cell(change @ atoms.cell.array)
        samples.append((image, np.eye(3), None))
    return samples


def equivariance_error(
    calc: Calculator,
    atoms: Atoms,
    n_rotations: int = 16,
    seed: int = 0,
    properties: Sequence[str] = ("energy", "forces", "stress"),
    symmetries: Sequence[str] = SYMMETRIES,
    l_max: Optional[int] = None,
    n_samples: int = 8,
    max_translation: float = 5.0,
) -> Dict[str, Dict[str, float]]:
    r"""How far ``calc`` is from invariance/equivariance on ``atoms``, per symmetry and property.

    For each symmetry class a set of group elements ``g_k`` with weights ``w_k`` (summing to 1) is
    applied to ``atoms``; ``calc`` predicts ``y(g_k·x)``, which is transformed back to the frame of
    ``x`` (module docstring), giving :math:`\tilde y_k`. The figure is the root-mean-square
    deviation from the group average, normalised per component,

    .. math::

        \epsilon = \Big[\frac{1}{d} \sum_k w_k \,\big\|\tilde y_k - \bar y\big\|^2\Big]^{1/2},
        \qquad \bar y = \sum_k w_k \tilde y_k,

    with ``d`` the number of components: 1 for the energy per atom (eV/atom), ``3N`` for the forces
    (eV/Å), 9 for the full 3×3 stress (eV/Å³). With Haar-random rotations (``w_k = 1/K``) this is
    the Monte-Carlo estimate of the Haar-average definition of Domina, Abbott, Pegolo, Bigi and
    Ceriotti, "How unconstrained machine-learning models learn physical symmetries" (2026),
    :math:`\epsilon^2 = \frac{1}{d}\int dR\, \|R^{-1} y(Rx) - \int dR'\, R'^{-1} y(R'x)\|^2`,
    directly comparable with an accuracy RMSE of the same property. With the quadrature grid
    (``l_max``) the average over the grid is exact when the back-transformed prediction, as a
    function of the rotation, has no content above degree ``l_max/2`` (its square then has none
    above ``l_max``). An exactly equivariant calculator gives 0 up to round-off.

    Symmetry classes (keys of the result, in :data:`SYMMETRIES` order, as selected by ``symmetries``):

    - ``"rotation"``: proper rotations; ``n_rotations`` Haar-random ones, or the
      :func:`rotation_quadrature` grid of degree ``l_max`` when ``l_max`` is given.
    - ``"inversion"``: the same rotations together with their compositions with the inversion
      (O(3), each half weighted equally). For a calculator exact under rotations this is half the
      RMS difference between the predictions for ``x`` and its mirror image.
    - ``"translation"``: ``n_samples`` rigid shifts uniform in
      ``[-max_translation, max_translation]³`` Å (positions are not wrapped back into the cell).
    - ``"permutation"``: ``n_samples`` random permutations among atoms of the same element;
      omitted if no two atoms share an element.
    - ``"cell"``: ``n_samples`` equivalent descriptions of the same periodic system: every atom
      shifted by a random lattice vector (integer components in {-1, 0, 1} along periodic axes)
      and the cell vectors changed by two random unimodular shears ``a_i -> a_i ± a_j`` between
      periodic axes; omitted for a non-periodic system.

    The stress is measured only for systems periodic in all three directions. Every class draws
    from its own stream of ``seed``: the result is deterministic for a given ``seed`` (and a
    deterministic calculator), whichever classes are selected. Cost: ``2 n_rotations`` (or twice
    the grid size) plus ``n_samples`` per further class evaluations of ``calc``.

    Args:
        calc: any ASE calculator.
        atoms: the structure; it is not modified and its calculator is not used.
        n_rotations: number of Haar-random rotations (ignored when ``l_max`` is given).
        seed: seed of every random choice.
        properties: a subset of ``("energy", "forces", "stress")``.
        symmetries: a subset of :data:`SYMMETRIES`.
        l_max: use the rotation quadrature of this degree instead of random rotations.
        n_samples: group elements per class for translations, permutations and cell choices.
        max_translation: half-width in Å of the box translations are drawn from.

    Returns:
        ``{symmetry: {property: error}}``, errors as floats in the units of :data:`UNITS`.
    """
    for given, known in ((properties, UNITS), (symmetries, SYMMETRIES)):
        if set(given) - set(known):
            raise ValueError(f"unknown {sorted(set(given) - set(known))}; choose from {', '.join(known)}")
    properties = [p for p in properties if p != "stress" or atoms.pbc.all()]
    n = len(atoms)
    errors = {}

    if "rotation" in symmetries or "inversion" in symmetries:
        if l_max is None:
            rotations = random_rotation(torch.Generator().manual_seed(seed), shape=(n_rotations,)).numpy()
            weights = np.full(n_rotations, 1.0 / n_rotations)
        else:
            rotations, weights = rotation_quadrature(l_max)
        proper = _back_transformed(calc, [(_rotated(atoms, R), R, None) for R in rotations], properties)
        if "rotation" in symmetries:
            errors["rotation"] = _figures(proper, weights, n)
        if "inversion" in symmetries:
            improper = _back_transformed(calc, [(_rotated(atoms, -R), -R, None) for R in rotations], properties)
            errors["inversion"] = _figures({p: np.concatenate([proper[p], improper[p]]) for p in properties},
                                           np.concatenate([weights, weights]) / 2, n)

    builders = {
        "translation": lambda rng: _translations(atoms, rng, n_samples, max_translation),
        "permutation": lambda rng: _permutations(atoms, rng, n_samples),
        "cell": lambda rng: _cell_choices(atoms, rng, n_samples),
    }
    streams = np.random.SeedSequence(seed).spawn(len(builders))
    for (name, build), stream in zip(builders.items(), streams):
        samples = build(np.random.default_rng(stream)) if name in symmetries else []
        if samples:
            errors[name] = _figures(_back_transformed(calc, samples, properties),
                                    np.full(len(samples), 1.0 / len(samples)), n)
    return errors


class SymmetrizedCalculator(Calculator):
    r"""An ASE calculator that averages another one over rotations and, optionally, inversion.

    Predicts energy (eV), forces (N, 3) in eV/Å and, for systems periodic in all three directions
    (or when asked for), stress (6,) in eV/Å³ (Voigt order xx, yy, zz, yz, xz, xy) as

    .. math::  \bar y(x) = \sum_k w_k\, g_k^{-1}\cdot y(g_k x)

    over the group elements ``g_k`` (module docstring for how predictions are transformed back):

    - rotations: the identity alone if ``l_max`` is None, else the :func:`rotation_quadrature` of
      degree ``l_max`` (Gauss-Legendre × uniform Euler-angle grid, ``(l_max+1)² ceil((l_max+1)/2)``
      rotations): every component of the prediction up to degree ``l_max`` in the rotation is
      averaged exactly, so a calculator whose orientation dependence is band-limited to ``l_max``
      becomes exactly SO(3)-equivariant;
    - if ``inversion``: each of those, and its composition with the inversion (twice the
      evaluations). ``l_max=None, inversion=True`` costs two evaluations and makes any
      SO(3)-equivariant calculator exactly O(3)-equivariant (e.g. SevenNet-0, which has no parity).

    The averaged energy is itself the average of the energies ``E(g_k x)``, whose gradient is
    ``sum_k w_k F(g_k x) @ g_k``: the averaged forces (and stress) are exact derivatives of the
    averaged energy whenever the wrapped calculator's are of its energy.

    With ``return_spread`` the results also hold the elementwise spread over the group,
    ``sqrt(sum_k w_k (y_k - mean)²)`` (see :func:`equivariance_error`): ``energy_spread`` (float, eV),
    ``forces_spread`` (N, 3) and ``stress_spread`` (6,). Evaluations are sequential, one per group
    element.

    Args:
        calc: any ASE calculator (it is reused for every rotated copy).
        l_max: degree of exactness of the rotation average, or None for no rotation average.
        inversion: also average over {identity, inversion}.
        return_spread: also store the spreads in ``results``.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, calc: Calculator, l_max: Optional[int] = None, inversion: bool = True,
                 return_spread: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.calc = calc
        if l_max is None:
            rotations, weights = np.eye(3)[None], np.ones(1)
        else:
            rotations, weights = rotation_quadrature(l_max)
        if inversion:
            rotations, weights = np.concatenate([rotations, -rotations]), np.concatenate([weights, weights]) / 2
        self.operations, self.weights = rotations, weights
        self.return_spread = return_spread
        if return_spread:
            self.implemented_properties = self.implemented_properties + [
                "energy_spread", "forces_spread", "stress_spread"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        wanted = ["energy", "forces"]
        if "stress" in properties or (self.atoms.pbc.all() and "stress" in self.calc.implemented_properties):
            wanted.append("stress")
        values = _back_transformed(self.calc, [(_rotated(self.atoms, g), g, None) for g in self.operations], wanted)
        for p in wanted:
            mean, spread = _mean_and_spread(values[p], self.weights)
            if p == "energy":
                mean, spread = float(mean), float(spread)
                self.results["free_energy"] = mean
            elif p == "stress":
                mean, spread = full_3x3_to_voigt_6_stress(mean), full_3x3_to_voigt_6_stress(spread)
            self.results[p] = mean
            if self.return_spread:
                self.results[p + "_spread"] = spread


def calculator_by_name(name: str, **kwargs) -> Calculator:
    """An ASE calculator from its name, for ``ase-equivariant check --calculator NAME``.

    ``"sevennet-0"`` or ``"ours"``: :class:`~ase_equivariant.EquivariantCalculator` with the
    SevenNet-0 weights; any other name ASE knows (``ase.calculators.calculator.names``: ``"emt"``,
    ``"lj"``, ``"morse"``, ...) is built by ASE. ``kwargs`` go to the constructor.

    Raises:
        ValueError: for a name neither we nor ASE know.
        RuntimeError: if our calculator is asked for but cannot be imported.
    """
    from ase.calculators.calculator import get_calculator_class, names

    key = name.lower()
    if key in ("sevennet-0", "ours"):
        try:
            from . import EquivariantCalculator
        except ImportError as err:
            raise RuntimeError(f"calculator {name!r} needs ase_equivariant.EquivariantCalculator, "
                               f"which cannot be imported here: {err}") from err
        return EquivariantCalculator(model="sevennet-0", **kwargs)
    if key not in names:
        raise ValueError(f"unknown calculator {name!r}; use 'sevennet-0' (alias 'ours') or one of "
                         f"ASE's: {', '.join(names)}")
    return get_calculator_class(key)(**kwargs)


def check_report(calc: Calculator, atoms: Atoms, **options) -> str:
    """The :func:`equivariance_error` table of ``calc`` on ``atoms``, as printable text.

    ``options`` go to :func:`equivariance_error`. One row per symmetry class, one column per
    property measured (units in the header).
    """
    errors = equivariance_error(calc, atoms, **options)
    columns = list(next(iter(errors.values()), {}))
    settings = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "defaults"
    lines = [
        f"Equivariance errors of {type(calc).__name__} on {atoms.get_chemical_formula()} "
        f"({len(atoms)} atoms, pbc={''.join('TF'[not p] for p in atoms.pbc)}; {settings})",
        "RMS deviation of back-transformed predictions from their group average, per component",
        f"{'symmetry':<12}" + "".join(f"{p + ' [' + UNITS[p] + ']':>24}" for p in columns),
    ]
    lines += [f"{symmetry:<12}" + "".join(f"{row[p]:>24.3e}" for p in columns) for symmetry, row in errors.items()]
    return "\n".join(lines)

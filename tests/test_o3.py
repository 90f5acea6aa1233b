"""Tests of ase_equivariant.o3: intrinsic properties, and equality with e3nn when it is installed."""

import math

import pytest
import torch

from ase_equivariant.o3 import Irrep, Irreps, random_rotation, spherical_harmonics, wigner_3j, wigner_D

LMAX = 6
DTYPE = torch.float64


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def sh_block(l, x):
    return spherical_harmonics(l, x)[..., l * l : (l + 1) ** 2]


def triangle(lmax):
    return [
        (l1, l2, l3)
        for l1 in range(lmax + 1)
        for l2 in range(lmax + 1)
        for l3 in range(abs(l1 - l2), min(l1 + l2, lmax) + 1)
    ]


# --- Irreps -----------------------------------------------------------------------------------


def test_irreps_parse_and_properties():
    irreps = Irreps("128x0e+64x1e+32x2e")
    assert str(irreps) == "128x0e+64x1e+32x2e"
    assert irreps.dim == 128 + 64 * 3 + 32 * 5
    assert irreps.num_irreps == 224
    assert irreps.lmax == 2
    assert len(irreps) == 3
    assert irreps[1] == (64, (1, 1)) and irreps[1].ir.l == 1 and irreps[1].mul == 64
    assert [(mul, l, p) for mul, (l, p) in irreps] == [(128, 0, 1), (64, 1, 1), (32, 2, 1)]
    assert irreps.slices() == [slice(0, 128), slice(128, 320), slice(320, 480)]
    assert Irreps([(128, (0, 1)), (64, (1, 1)), (32, "2e")]) == irreps
    assert Irreps(irreps) == irreps and hash(Irreps(str(irreps))) == hash(irreps)
    assert Irreps(" 2x1o + 0e ") == Irreps([(2, (1, -1)), (1, (0, 1))])
    assert Irreps("1y + 2y") == Irreps("1o+2e")
    assert Irreps("") == Irreps() and Irreps().dim == 0
    assert Irreps("0e+1o") + "2e" == Irreps("0e+1o+2e")
    assert irreps[1:] == Irreps("64x1e+32x2e")
    assert Irreps("3x0e+0x3o").lmax == 0
    assert "1e" in irreps and Irrep(1, -1) not in irreps
    assert Irreps("2x0e+1o+3x0e").count("0e") == 5
    assert Irreps.spherical_harmonics(3) == Irreps("0e+1o+2e+3o")
    assert Irreps.spherical_harmonics(2, p=1) == Irreps("0e+1e+2e")
    assert list(Irrep("1o") * Irrep("2o")) == [Irrep(1, 1), Irrep(2, 1), Irrep(3, 1)]
    for bad in ("1x", "3q", "x1o", "-1e", "2.5x1o"):
        with pytest.raises(ValueError):
            Irreps(bad)


def test_irreps_simplify_and_sort():
    assert Irreps("1e + 1e + 0e").simplify() == Irreps("2x1e+1x0e")
    assert Irreps("1e + 1e + 0e + 1e").simplify() == Irreps("2x1e+0e+1e")
    assert Irreps("0x1e + 2x0e + 0e").simplify() == Irreps("3x0e")
    # as e3nn's docstring examples: tuple order on (l, p), so 0o < 0e and 1o < 1e
    assert Irreps("1e + 0e + 1e").sort().irreps == Irreps("0e+1e+1e")
    s = Irreps("2o + 1e + 0e + 1e").sort()
    assert s.p == (3, 1, 0, 2) and s.inv == (2, 1, 3, 0)
    irreps, p, inv = Irreps("3x1e+2x0e+0o+1o").sort()
    assert irreps == Irreps("0o+2x0e+1o+3x1e") and p == (3, 1, 0, 2) and inv == (2, 1, 3, 0)
    assert Irreps("1e + 0e + 1e + 0x2e").regroup() == Irreps("0e+2x1e")


def test_irreps_D_from_matrix(gen):
    irreps = Irreps("2x0e+1o+2x1e+2o")
    R = random_rotation(gen, shape=(2,))
    D = irreps.D_from_matrix(R)
    assert D.shape == (2, irreps.dim, irreps.dim)
    assert torch.allclose(D[:, 2:5, 2:5], R, atol=1e-14)  # 1o of a proper rotation is R
    assert torch.allclose(D[:, 8:11, 8:11], R, atol=1e-14)  # second copy of 1e
    assert torch.equal(D[:, 5:8, 8:11], torch.zeros(2, 3, 3, dtype=DTYPE))
    P = irreps.D_from_matrix(-torch.eye(3, dtype=DTYPE))  # inversion: the parities
    parities = torch.tensor([1, 1, -1, -1, -1, 1, 1, 1, 1, 1, 1] + [-1] * 5, dtype=DTYPE)
    assert torch.allclose(P, torch.diag(parities), atol=1e-14)


# --- rotations and Wigner D -------------------------------------------------------------------


def test_random_rotation(gen):
    R = random_rotation(gen, shape=(1000,))
    eye = torch.eye(3, dtype=DTYPE)
    assert torch.allclose(R @ R.transpose(-1, -2), eye.expand_as(R), atol=1e-14)
    assert torch.allclose(torch.linalg.det(R), torch.ones(1000, dtype=DTYPE), atol=1e-14)
    # Haar measure: E[R] = 0 and E[R_ij^2] = 1/3
    assert R.mean(0).abs().max() < 0.1
    assert (R.pow(2).mean(0) - 1 / 3).abs().max() < 0.05
    assert random_rotation(dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize("l", range(LMAX + 1))
def test_wigner_D_orthogonal_homomorphism(l, gen):
    R1, R2 = random_rotation(gen, shape=(2, 5)).unbind(0)
    D1, D2, D12 = wigner_D(l, R1), wigner_D(l, R2), wigner_D(l, R1 @ R2)
    eye = torch.eye(2 * l + 1, dtype=DTYPE).expand_as(D1)
    assert torch.allclose(D1 @ D1.transpose(-1, -2), eye, atol=1e-12)
    assert torch.allclose(D12, D1 @ D2, atol=1e-12)
    assert torch.allclose(wigner_D(l, R1.transpose(-1, -2)), D1.transpose(-1, -2), atol=1e-12)
    assert torch.allclose(wigner_D(l, torch.eye(3, dtype=DTYPE)), eye[0], atol=1e-14)
    assert torch.allclose(wigner_D(l, -R1), (-1) ** l * D1, atol=1e-14)


# --- spherical harmonics ----------------------------------------------------------------------


@pytest.mark.parametrize("l", range(LMAX + 1))
def test_sh_equivariance(l, gen):
    x = torch.randn(20, 3, generator=gen, dtype=DTYPE)
    R = random_rotation(gen, shape=(20,))
    for Q in (R, -R):  # proper and improper
        Rx = (Q @ x[:, :, None])[:, :, 0]
        expected = (wigner_D(l, Q) @ sh_block(l, x)[:, :, None])[:, :, 0]
        assert torch.allclose(sh_block(l, Rx), expected, atol=1e-12 * math.sqrt(2 * l + 1))


def test_sh_orthonormality():
    lebedev_rule = pytest.importorskip("scipy.integrate").lebedev_rule
    points, weights = lebedev_rule(2 * LMAX + 1)  # exact for polynomials of degree 2 LMAX + 1
    Y = spherical_harmonics(LMAX, torch.from_numpy(points.T))
    w = torch.from_numpy(weights) / (4 * math.pi)
    gram = torch.einsum("p,pi,pj->ij", w, Y, Y)
    assert torch.allclose(gram, torch.eye((LMAX + 1) ** 2, dtype=DTYPE), atol=1e-12)


def test_sh_explicit_low_orders(gen):
    x = torch.randn(50, 3, generator=gen, dtype=DTYPE)
    u = x / x.norm(dim=-1, keepdim=True)
    Y = spherical_harmonics(2, x)
    assert Y.shape == (50, 9)
    assert torch.equal(Y[:, 0], torch.ones(50, dtype=DTYPE))
    assert torch.allclose(Y[:, 1:4], math.sqrt(3) * u, atol=1e-15)
    ux, uy, uz = u.unbind(-1)
    assert torch.allclose(Y[:, 4], math.sqrt(15) * ux * uz, atol=1e-14)
    assert torch.allclose(Y[:, 6], math.sqrt(5) * (uy**2 - (ux**2 + uz**2) / 2), atol=1e-14)
    for l in range(LMAX + 1):  # component normalisation on the sphere
        norm2 = sh_block(l, x).pow(2).sum(-1)
        assert torch.allclose(norm2, torch.full_like(norm2, 2 * l + 1), atol=1e-12)


def test_sh_unnormalized_is_homogeneous(gen):
    x = torch.randn(30, 3, generator=gen, dtype=DTYPE)
    r = x.norm(dim=-1, keepdim=True)
    Y = spherical_harmonics(LMAX, x, normalize=False)
    scale = torch.cat([r.expand(-1, 2 * l + 1) ** l for l in range(LMAX + 1)], dim=-1)
    assert torch.allclose(Y, scale * spherical_harmonics(LMAX, x), rtol=1e-12, atol=0)


def test_sh_zero_vector_dtype_and_grad():
    x = torch.zeros(2, 3, dtype=DTYPE, requires_grad=True)
    Y = spherical_harmonics(3, x)
    expected = torch.zeros(2, 16, dtype=DTYPE)
    expected[:, 0] = 1
    assert torch.equal(Y.detach(), expected)
    (grad,) = torch.autograd.grad(Y.sum(), x)
    assert torch.isfinite(grad).all()
    y32 = spherical_harmonics(3, torch.randn(4, 7, 3))
    assert y32.dtype == torch.float32 and y32.shape == (4, 7, 16)
    assert spherical_harmonics(0, torch.randn(5, 3)).shape == (5, 1)


def test_sh_gradcheck(gen):
    x = torch.randn(4, 3, generator=gen, dtype=DTYPE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: spherical_harmonics(4, v), (x,))
    assert torch.autograd.gradcheck(lambda v: spherical_harmonics(4, v, normalize=False), (x,))


# --- Wigner 3j --------------------------------------------------------------------------------


@pytest.mark.parametrize("l1, l2, l3", triangle(4))
def test_wigner_3j_invariance_and_orthogonality(l1, l2, l3, gen):
    C = wigner_3j(l1, l2, l3)
    assert C.shape == (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1)
    assert math.isclose(C.pow(2).sum().item(), 1.0, rel_tol=1e-14)
    R = random_rotation(gen)
    rotated = torch.einsum("ijk,ia,jb,kc->abc", C, wigner_D(l1, R), wigner_D(l2, R), wigner_D(l3, R))
    assert torch.allclose(rotated, C, atol=1e-12)
    # sum_{m1 m2} C_{m1 m2 m3} C_{m1 m2 m3'} = delta / (2 l3 + 1)
    eye = torch.eye(2 * l3 + 1, dtype=DTYPE) / (2 * l3 + 1)
    assert torch.allclose(torch.einsum("ijk,ijn->kn", C, C), eye, atol=1e-14)
    # symmetry under permutations of (l1, l2, l3): even ones exactly, odd ones up to (-1)^(l1+l2+l3)
    sign = (-1) ** (l1 + l2 + l3)
    assert torch.allclose(wigner_3j(l2, l3, l1), C.permute(1, 2, 0), atol=1e-14)
    assert torch.allclose(wigner_3j(l3, l1, l2), C.permute(2, 0, 1), atol=1e-14)
    assert torch.allclose(wigner_3j(l2, l1, l3), sign * C.permute(1, 0, 2), atol=1e-14)
    assert torch.allclose(wigner_3j(l1, l3, l2), sign * C.permute(0, 2, 1), atol=1e-14)


def test_wigner_3j_orthogonality_between_l3():
    for l1, l2 in [(1, 1), (2, 1), (2, 2), (3, 2)]:
        for l3 in range(abs(l1 - l2), l1 + l2 + 1):
            for l3b in range(abs(l1 - l2), l1 + l2 + 1):
                if l3b != l3:
                    overlap = torch.einsum("ijk,ijn->kn", wigner_3j(l1, l2, l3), wigner_3j(l1, l2, l3b))
                    assert overlap.abs().max() < 1e-14


def test_wigner_3j_low_orders_and_errors():
    assert torch.allclose(wigner_3j(1, 1, 0)[:, :, 0], torch.eye(3, dtype=DTYPE) / math.sqrt(3))
    eps = torch.zeros(3, 3, 3, dtype=DTYPE)
    for i, j, k in [(0, 1, 2), (1, 2, 0), (2, 0, 1)]:
        eps[i, j, k], eps[j, i, k] = 1, -1
    assert torch.allclose(wigner_3j(1, 1, 1), eps / math.sqrt(6))
    assert wigner_3j(1, 2, 3, dtype=torch.float32).dtype == torch.float32
    C = wigner_3j(1, 1, 2)
    C.zero_()  # a copy: the cache is not touched
    assert wigner_3j(1, 1, 2).abs().sum() > 0
    with pytest.raises(ValueError):
        wigner_3j(1, 1, 3)


def test_sh_recursion_matches_wigner_3j(gen):
    # Y^{l+1} is proportional to C^{(l+1, 1, l)} contracted with x and Y^l (e3nn's definition)
    x = torch.nn.functional.normalize(torch.randn(10, 3, generator=gen, dtype=DTYPE), dim=-1)
    for l in range(1, LMAX):
        proj = torch.einsum("ikj,nk,nj->ni", wigner_3j(l + 1, 1, l), x, sh_block(l, x))
        ratio = sh_block(l + 1, x) / proj
        ratio = ratio[proj.abs() > 1e-3]
        assert (ratio > 0).all() and torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-10)


# --- equality with e3nn -----------------------------------------------------------------------


def test_sh_equals_e3nn(gen):
    e3nn_o3 = pytest.importorskip("e3nn.o3")
    x = torch.randn(200, 3, generator=gen, dtype=DTYPE) * 2
    x[0] = 0
    for normalize in (True, False):
        ours = spherical_harmonics(LMAX, x, normalize=normalize)
        ref = e3nn_o3.spherical_harmonics(list(range(LMAX + 1)), x, normalize, normalization="component")
        scale = ref.abs().amax(dim=0, keepdim=True).clamp_min(1)
        assert ((ours - ref) / scale).abs().max() < 1e-12


def test_wigner_3j_equals_e3nn():
    e3nn_o3 = pytest.importorskip("e3nn.o3")
    for l1, l2, l3 in triangle(4):
        ref = e3nn_o3.wigner_3j(l1, l2, l3, dtype=DTYPE)
        assert (wigner_3j(l1, l2, l3) - ref).abs().max() < 1e-12, (l1, l2, l3)


@pytest.fixture
def float64_default():
    """e3nn builds its rotation generators in the default dtype."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


def test_D_and_irreps_equal_e3nn(gen, float64_default):
    e3nn_o3 = pytest.importorskip("e3nn.o3")
    R = random_rotation(gen, shape=(3,))
    for Q, p in ((R, 1), (-R, 1), (-R, -1)):  # proper, improper of even and odd parity
        for l in range(LMAX + 1):
            ref = e3nn_o3.Irrep(l, p).D_from_matrix(Q)
            assert (Irrep(l, p).D_from_matrix(Q) - ref).abs().max() < 1e-11  # e3nn: matrix_exp
    for text in ("128x0e+64x1e+32x2e", "3x1o+0e+2x1o+0x2e+1e+0o"):
        ours, ref = Irreps(text), e3nn_o3.Irreps(text)
        assert str(ours) == str(ref) and ours.dim == ref.dim and ours.slices() == ref.slices()
        assert str(ours.simplify()) == str(ref.simplify())
        s, s_ref = ours.sort(), ref.sort()
        assert str(s.irreps) == str(s_ref.irreps) and s.p == s_ref.p and s.inv == s_ref.inv

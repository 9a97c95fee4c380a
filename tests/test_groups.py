"""The planar groups: structure, the original's tables, the action on signals."""

import itertools
import math

import pytest
import torch

from g_selfatt.groups import E2, GROUPS, SE2, cyclic_group, dihedral_group, fractional_rotation_matrix, get_group
from tests.conftest import REFERENCE_DIR

ALL_GROUPS = sorted(GROUPS)


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_cayley_table_is_the_matrix_product(name):
    group = get_group(name)
    mats = group.matrices()
    table = group.cayley_table()
    for a, b in itertools.product(range(group.num_elements), repeat=2):
        torch.testing.assert_close(mats[a] @ mats[b], mats[table[a, b]], rtol=0, atol=1e-12)
    # A group table is a Latin square.
    for row in table:
        assert sorted(row.tolist()) == list(range(group.num_elements))


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_identity_and_inverses(name):
    group = get_group(name)
    identity = group.index_of_matrix(torch.eye(2, dtype=torch.float64))
    assert identity == 0 and group.is_identity(group.elements[0])
    inverse = group.inverse_indices()
    table = group.cayley_table()
    assert all(table[a, inverse[a]] == identity for a in range(group.num_elements))


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_relative_index_is_invariant_under_joint_right_multiplication(name):
    group = get_group(name)
    table, rel = group.cayley_table(), group.relative_index_table()
    for u, g, m in itertools.product(range(group.num_elements), repeat=3):
        assert rel[table[g, u], table[m, u]] == rel[g, m]


@pytest.mark.parametrize("action", ["right", "left"])
@pytest.mark.parametrize("name", ALL_GROUPS)
def test_feature_map_action_is_a_representation(name, action):
    group = get_group(name)
    x = torch.randn(2, 3, group.num_elements, 6, 6, dtype=torch.float64)
    table = group.cayley_table()
    for u1, u2 in itertools.product(group.grid_exact(), repeat=2):
        twice = group.transform_feature_map(group.transform_feature_map(x, u2, action=action), u1, action=action)
        torch.testing.assert_close(twice, group.transform_feature_map(x, int(table[u1, u2]), action=action),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_the_two_actions_read_g_u_and_u_inverse_g(name):
    # Checked against the matrices, independently of the Cayley table.
    group = get_group(name)
    mats = group.matrices()
    for u in range(group.num_elements):
        right, left = group.axis_permutation(u, "right"), group.axis_permutation(u, "left")
        for g in range(group.num_elements):
            assert int(right[g]) == group.index_of_matrix(mats[g] @ mats[u])
            assert int(left[g]) == group.index_of_matrix(torch.linalg.inv(mats[u]) @ mats[g])
    with pytest.raises(ValueError, match="Unknown action 'up'"):
        group.axis_permutation(0, "up")


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_image_action_matches_the_element_matrix(name):
    """transform_image(x, u)(p) = x(M_u^-1 p), checked pixel by pixel on centred coordinates."""
    group = get_group(name)
    size = 5
    x = torch.randn(size, size, dtype=torch.float64)
    centre = (size - 1) / 2
    for u in group.grid_exact():
        out = group.transform_image(x, u)
        inverse = torch.linalg.inv(group.matrices()[u])
        for r, c in itertools.product(range(size), repeat=2):
            source = inverse @ torch.tensor([r - centre, c - centre], dtype=torch.float64)
            rs, cs = (int(round(float(v) + centre)) for v in source)
            assert out[r, c] == x[rs, cs]


def test_grid_exact_elements_are_the_90_degree_subgroup():
    assert get_group("p8").grid_exact() == [0, 2, 4, 6]
    assert get_group("p12").grid_exact() == [0, 3, 6, 9]
    assert get_group("p8m").grid_exact() == [0, 2, 4, 6, 8, 10, 12, 14]
    assert get_group("p4m").grid_exact() == list(range(8))
    with pytest.raises(ValueError, match="multiples of 90 degrees"):
        get_group("p8").transform_image(torch.zeros(3, 3), 1)


@pytest.mark.parametrize("record, group", [("gsa_group_sa_e2_8.pt", E2(8)), ("gsa_group_sa_se2_8.pt", SE2(8)),
                                           ("gsa_group_sa_se2_4.pt", SE2(4))])
def test_buffers_equal_the_original(record, group):
    state = torch.load(REFERENCE_DIR / record, weights_only=True)["state_dict"]
    assert torch.equal(state["group._elements"], group.elements)
    assert torch.equal(state["group._relative_positions"], group.relative_positions)
    assert torch.equal(state["group._identity"], group.identity)


def test_cli_names_and_constructors():
    assert {name: get_group(name).num_elements for name in GROUPS} == {
        "z2": 1, "p4": 4, "p8": 8, "p12": 12, "p16": 16, "mz2": 2, "p4m": 8, "p8m": 16}
    assert isinstance(get_group("p4m"), E2) and isinstance(get_group("p16"), SE2)
    assert cyclic_group(4).num_elements == 4 and dihedral_group(4).num_elements == 8


def test_unknown_group_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown group 'p5'.*'p4m'"):
        get_group("p5")


@pytest.mark.parametrize("bad", [0, -2, 3.0])
def test_bad_group_orders_are_rejected(bad):
    with pytest.raises(ValueError, match="number of elements"):
        SE2(bad)
    with pytest.raises(ValueError, match="multiple of 2"):
        E2(3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["p4", "p8", "p4m", "p8m"])
def test_casting_a_model_keeps_the_group_structure(name, dtype):
    """module.to(dtype) casts the float64 element buffer; the structure must not depend on it."""
    group = get_group(name)
    exact, table = group.grid_exact(), group.cayley_table().clone()
    wrapper = torch.nn.Module()
    wrapper.group = get_group(name)
    wrapper.to(dtype)
    assert wrapper.group.elements.dtype == dtype
    assert wrapper.group.grid_exact() == exact
    assert torch.equal(wrapper.group.cayley_table(), table)
    assert len(exact) == (4 if "m" not in name else 8)


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_grid_exact_elements_permute_the_matrices_bitwise(name):
    """M_{v u} = M_v M_u and M_{u v} = M_u M_v exactly (not to round-off) for every v and grid-exact u.

    The products with a signed permutation matrix are exact, so this holds only if the
    matrices of angles that differ by quarter turns share their rounded entries.
    """
    group = get_group(name)
    mats, table = group.matrices(), group.cayley_table()
    for v, u in itertools.product(range(group.num_elements), group.grid_exact()):
        assert torch.equal(mats[table[v, u]], mats[v] @ mats[u]), (v, u)
        assert torch.equal(mats[table[u, v]], mats[u] @ mats[v]), (u, v)


@pytest.mark.parametrize("num_rotations", [1, 2, 3, 4, 5, 6, 8, 12, 16, 24])
def test_fractional_rotation_matrix_is_the_rotation(num_rotations):
    for steps in range(-num_rotations, 2 * num_rotations):
        angle = 2 * math.pi * steps / num_rotations
        expected = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                                dtype=torch.float64)
        # math.cos of an unreduced angle up to 4 pi is itself off by a few 1e-16.
        torch.testing.assert_close(fractional_rotation_matrix(steps, num_rotations), expected, rtol=0, atol=1e-14)


def test_eighth_turns_have_equal_cosine_and_sine():
    """Offsets on the diagonals map to exact zeros under rotations by 45 degrees."""
    for steps in (1, 3, 5, 7):
        entries = fractional_rotation_matrix(steps, 8).abs().unique()
        assert entries.tolist() == [math.sqrt(0.5)]


def _offset_grid(radius):
    steps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    return torch.stack(torch.meshgrid(steps, steps, indexing="ij"))  # (2, S, S)


def _original_shift(steps, n, index):
    """The original's action on group indices: element ``steps`` maps index ``i`` to ``i + steps`` (mod n)."""
    return (index + steps) % n


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_original_public_methods(name):
    """elements, identity, left_action_on_Rd/H/G, matrix_form, absolute_determinant as the original defines them."""
    group = get_group(name)
    n = group.num_elements
    mirrored = isinstance(group, E2)
    rotations = n // 2 if mirrored else n
    assert torch.equal(group.identity, torch.tensor([0.0, 1.0] if mirrored else [0.0]))
    pp = _offset_grid(2)
    indices = torch.arange(n)
    for index, h in enumerate(group.elements):
        angle = float(h[0])
        assert angle == pytest.approx(2 * math.pi * (index % rotations) / rotations, abs=1e-12)
        assert group.absolute_determinant(h) == 1.0
        rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        torch.testing.assert_close(group.matrix_form(h[0] if mirrored else h), rotation, rtol=0, atol=1e-7)
        # Rd: rotate the coordinates, then (mirrors) flip the last axis of the grid.
        expected = torch.einsum("oi,iab->oab", rotation.double(), pp.double())
        if mirrored and index >= rotations:
            expected = torch.flip(expected, dims=[-1])
        acted = group.left_action_on_Rd(h, pp)
        assert acted.dtype == torch.float32
        torch.testing.assert_close(acted, expected.float(), rtol=0, atol=1e-6)
        # H: rotations shift the rotation half up and the mirror half down; mirrors swap the halves.
        steps = index % rotations
        if mirrored:
            halves = [_original_shift(steps, rotations, indices[:rotations]),
                      rotations + _original_shift(-steps, rotations, indices[:rotations])]
            expected_h = torch.cat(halves[::-1] if index >= rotations else halves)
        else:
            expected_h = _original_shift(steps, n, indices)
        assert torch.equal(group.left_action_on_H(h, indices), expected_h)
        on_rd, on_h = group.left_action_on_G(h, pp, indices)
        assert torch.equal(on_rd, acted) and torch.equal(on_h, expected_h)

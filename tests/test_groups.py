"""The planar groups: structure, the original's tables, the action on signals."""

import itertools

import pytest
import torch

from g_selfatt.groups import E2, GROUPS, SE2, cyclic_group, dihedral_group, get_group
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


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_feature_map_action_is_a_representation(name):
    group = get_group(name)
    x = torch.randn(2, 3, group.num_elements, 6, 6, dtype=torch.float64)
    table = group.cayley_table()
    for u1, u2 in itertools.product(group.grid_exact(), repeat=2):
        twice = group.transform_feature_map(group.transform_feature_map(x, u2), u1)
        torch.testing.assert_close(twice, group.transform_feature_map(x, int(table[u1, u2])), rtol=0, atol=0)


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

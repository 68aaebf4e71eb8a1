"""Target labels by name and the conflict rules of spec section 1."""
from __future__ import annotations

import pytest
import torch

from bridgegan.reference.attributes import PRESETS, apply_edits, resolve_attributes, set_rows

ATTRS = ("Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair",
         "Receding_Hairline", "Straight_Hair", "Wavy_Hair", "Male")


def row(**on):
    return torch.tensor([[float(on.get(a, 0)) for a in ATTRS]])


def as_dict(t):
    return {a: int(v) for a, v in zip(ATTRS, t[0].tolist())}


def test_hair_colours_are_exclusive():
    out = as_dict(apply_edits(row(Black_Hair=1, Male=1), ATTRS, {"Blond_Hair": 1}))
    assert out["Blond_Hair"] == 1 and out["Black_Hair"] == 0 and out["Male"] == 1
    assert out["Brown_Hair"] == out["Gray_Hair"] == 0


def test_bald_and_receding_clear_bangs():
    for name in ("Bald", "Receding_Hairline"):
        out = as_dict(apply_edits(row(Bangs=1), ATTRS, {name: 1}))
        assert out[name] == 1 and out["Bangs"] == 0


def test_straight_and_wavy_are_exclusive():
    assert as_dict(apply_edits(row(Wavy_Hair=1), ATTRS, {"Straight_Hair": 1}))["Wavy_Hair"] == 0
    assert as_dict(apply_edits(row(Straight_Hair=1), ATTRS, {"Wavy_Hair": 1}))["Straight_Hair"] == 0


def test_explicit_edits_win_and_clearing_is_not_a_rule():
    out = as_dict(apply_edits(row(Bangs=1), ATTRS, {"Bald": 1, "Bangs": 1}))
    assert out["Bald"] == 1 and out["Bangs"] == 1
    out = as_dict(apply_edits(row(Black_Hair=1), ATTRS, {"Black_Hair": 0}))
    assert sum(out[h] for h in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")) == 0


def test_rows_set_to_their_own_values_get_the_rules_row_by_row():
    """Attributes taken from references differ from row to row: a row taking
    Black_Hair = 1 loses its Blond_Hair, a row taking Black_Hair = 0 keeps it; with the same
    values in every row, set_rows is apply_edits."""
    labels = torch.cat([row(Blond_Hair=1, Bangs=1), row(Blond_Hair=1, Bangs=1)])
    out = set_rows(labels, ATTRS, ["Black_Hair", "Bald"], torch.tensor([[1.0, 1.0],
                                                                         [0.0, 0.0]]))
    assert [as_dict(out[k:k + 1]) for k in range(2)] == [
        as_dict(row(Black_Hair=1, Bald=1)), as_dict(row(Blond_Hair=1, Bangs=1))]
    assert torch.equal(labels, torch.cat([row(Blond_Hair=1, Bangs=1)] * 2))  # not modified
    edits = {"Straight_Hair": 1, "Gray_Hair": 1, "Male": 0}
    assert torch.equal(set_rows(labels, ATTRS, list(edits), torch.tensor([[1.0, 1.0, 0.0]] * 2)),
                       apply_edits(labels, ATTRS, edits))


def test_input_is_not_modified_and_missing_rule_targets_are_fine():
    src = row(Black_Hair=1)
    apply_edits(src, ATTRS, {"Blond_Hair": 1})
    assert src[0, ATTRS.index("Black_Hair")] == 1
    stargan = PRESETS["stargan"]  # no Bangs: Bald is not in it either, only hair colours
    out = apply_edits(torch.tensor([[1.0, 0, 0, 1, 0]]), stargan, {"Brown_Hair": 1})
    assert out.tolist() == [[0.0, 0.0, 1.0, 1.0, 0.0]]


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError) as exc:
        apply_edits(row(), ATTRS, {"Blue_Hair": 1})
    assert "Blue_Hair" in str(exc.value) and "Wavy_Hair" in str(exc.value)
    with pytest.raises(ValueError, match="must be 0 or 1"):
        apply_edits(row(), ATTRS, {"Bald": 2})
    with pytest.raises(ValueError, match="presets are"):
        resolve_attributes("Young,Not_An_Attribute")
    assert resolve_attributes("attgan") == PRESETS["attgan"]
    assert resolve_attributes("Young, Male") == ("Young", "Male")

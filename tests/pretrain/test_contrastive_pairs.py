"""Positive-pair samplers: MICLe never pairs two cases, multimodal pairs other modalities, fallbacks work."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from core.pretrain.pairs import get_pair_sampler, list_pair_samplers, make_pair_sampler

# case A: 2 images of modality X + 1 of Y; case B: 2 images of X only; case C: 1 image; 2 without a case
CASES = ["A", "A", "A", "B", "B", "C", None, ""]
MODS = ["X", "X", "Y", "X", "X", "Y", "X", None]


def _partners(sampler, i, n=64):
    g = torch.Generator().manual_seed(i)
    return [sampler.partner(i, g) for _ in range(n)]


def test_registry():
    assert {"same_image", "same_case", "same_case_other_modality"} <= set(list_pair_samplers())
    with pytest.raises(ValueError):
        get_pair_sampler("nope")


def test_same_image():
    s = get_pair_sampler("same_image")(CASES, MODS)
    for i in range(len(CASES)):
        assert {p.partner for p in _partners(s, i)} == {i}
    assert [s.group(i) for i in range(len(CASES))] == list(range(len(CASES)))


def test_same_case_never_pairs_two_cases_and_falls_back():
    s = get_pair_sampler("same_case")(CASES, MODS)
    for i, case in enumerate(CASES):
        pairs = _partners(s, i)
        partners = {p.partner for p in pairs}
        if case in ("A", "B"):
            assert all(CASES[j] == case and j != i for j in partners)
            assert {p.rule for p in pairs} == {"same_case"}
        else:  # single-image case or no case id: two views of the same image
            assert partners == {i} and {p.rule for p in pairs} == {"same_image"}
    assert {p.partner for p in _partners(s, 0)} == {1, 2}           # both other images of case A are drawn
    groups = [s.group(i) for i in range(len(CASES))]
    assert groups[0] == groups[1] == groups[2] != groups[3] == groups[4]
    assert len({groups[5], groups[6], groups[7], groups[0], groups[3]}) == 5   # no-case images are alone


def test_same_case_other_modality_fallbacks():
    s = get_pair_sampler("same_case_other_modality")(CASES, MODS)
    assert {p.partner for p in _partners(s, 0)} == {2}              # X -> the Y image of case A
    assert {p.partner for p in _partners(s, 2)} == {0, 1}           # Y -> the X images of case A
    assert {p.rule for p in _partners(s, 3)} == {"same_case"}       # case B has one modality
    assert {p.partner for p in _partners(s, 3)} == {4}
    assert {p.rule for p in _partners(s, 5)} == {"same_image"}      # single-image case
    assert {p.partner for p in _partners(s, 7)} == {7}              # no case, no modality
    assert s.rule_counts() == {"same_case_other_modality": 3, "same_case": 2, "same_image": 3}


def test_unknown_modality_anchor_falls_back_to_same_case():
    s = get_pair_sampler("same_case_other_modality")(["A", "A"], [None, "X"])
    assert {p.rule for p in _partners(s, 0)} == {"same_case"}
    assert {p.rule for p in _partners(s, 1)} == {"same_case"}      # partner's modality unknown: not "other"


def test_from_records_and_determinism():
    recs = [SimpleNamespace(case_id=c, modality=m) for c, m in zip(CASES, MODS)]
    s = make_pair_sampler("same_case", recs)
    a = [p.partner for p in _partners(s, 0, 10)]
    b = [p.partner for p in _partners(s, 0, 10)]
    assert a == b
    assert "8 images" in s.describe()

"""b-values from every vendor convention, in the documented order of precedence."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from lesion_engine.intake.bvalues import b_value_of


def _siemens(value: bytes | str = b"800", sequence_name: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Manufacturer = "SIEMENS"
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS" if isinstance(value, str) else "OB", value)
    if sequence_name:
        ds.SequenceName = sequence_name
    return ds


def test_standard_attribute() -> None:
    ds = Dataset()
    ds.DiffusionBValue = 1400.0
    assert b_value_of(ds) == (1400.0, "DiffusionBValue")


def test_enhanced_functional_group_wins_over_top_level() -> None:
    ds = Dataset()
    ds.DiffusionBValue = 50.0
    frame = Dataset()
    item = Dataset()
    item.DiffusionBValue = 2000.0
    frame.MRDiffusionSequence = [item]
    assert b_value_of(ds, frame) == (2000.0, "MRDiffusionSequence")


def test_shared_functional_group() -> None:
    shared = Dataset()
    item = Dataset()
    item.DiffusionBValue = 1000.0
    shared.MRDiffusionSequence = [item]
    assert b_value_of(Dataset(), Dataset(), shared) == (1000.0, "MRDiffusionSequence")


@pytest.mark.parametrize("raw", [b"800", b"800 ", b"800\x00", "800"])
def test_siemens_private_tag_in_any_encoding(raw: bytes | str) -> None:
    assert b_value_of(_siemens(raw)) == (800.0, "siemens-private(0019,xx0C)")


def test_siemens_private_tag_found_through_its_creator_in_another_block() -> None:
    ds = Dataset()
    ds.add_new(0x00190010, "LO", "SOME OTHER CREATOR")
    ds.add_new(0x00190011, "LO", "SIEMENS MR HEADER")
    ds.add_new(0x0019100C, "IS", "50")  # belongs to the other creator: must not be read
    ds.add_new(0x0019110C, "IS", "1500")
    assert b_value_of(ds) == (1500.0, "siemens-private(0019,xx0C)")


def test_siemens_sequence_name_fallback() -> None:
    ds = Dataset()
    ds.SequenceName = "*ep_b800t"
    assert b_value_of(ds) == (800.0, "SequenceName")


def test_siemens_adc_sequence_name_is_not_a_b_value() -> None:
    ds = Dataset()
    ds.SequenceName = "*ep_b50_800"
    assert b_value_of(ds) is None


def test_standard_attribute_wins_over_private() -> None:
    ds = _siemens(b"800")
    ds.DiffusionBValue = 1000.0
    assert b_value_of(ds) == (1000.0, "DiffusionBValue")


@pytest.mark.parametrize(("stored", "expected"), [("1000001400\\8\\0\\0", 1400.0), ("800\\8\\0\\0", 800.0)])
def test_ge_private_first_value_with_offset(stored: str, expected: float) -> None:
    ds = Dataset()
    ds.ScanningSequence = ["EP", "SE"]
    block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    block.add_new(0x39, "IS", stored)
    assert b_value_of(ds) == (expected, "ge-private(0043,xx39)")


def test_philips_private() -> None:
    ds = Dataset()
    block = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
    block.add_new(0x03, "FL", 1500.0)
    assert b_value_of(ds) == (1500.0, "philips-private(2001,xx03)")


def test_no_b_value() -> None:
    ds = Dataset()
    ds.SeriesDescription = "t2_tse_tra"
    assert b_value_of(ds) is None


def test_private_element_without_creator_is_not_read() -> None:
    ds = Dataset()
    ds.add_new(0x0019100C, "IS", "800")
    assert b_value_of(ds) is None

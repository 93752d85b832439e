"""Long replies come in parts: they are joined whatever the order, and never lost."""

from __future__ import annotations

import pytest

from mcdaemon.core.sms import Reassembler, concatenation, decode, split

PHONE = ("+447700900123", "Acme")
OTHER = ("+447700900999", "Acme")


def test_the_concatenation_element_is_read_with_an_8_or_16_bit_reference() -> None:
    assert concatenation(bytes([5, 0x00, 3, 0x42, 3, 2])) == (0x42, 3, 2)
    assert concatenation(bytes([6, 0x08, 4, 0x01, 0x02, 2, 1])) == (0x0102, 2, 1)
    # another element first (a port number), then the concatenation
    assert concatenation(bytes([9, 0x05, 4, 0, 0, 0, 0, 0x00, 3, 7, 2, 2])) == (7, 2, 2)
    assert concatenation(bytes([2, 0x05, 0])) is None
    assert concatenation(b"") is None


def test_parts_in_any_order_make_one_text_once_all_are_in() -> None:
    joiner = Reassembler()
    assert joiner.add(PHONE, 7, 3, 3, "C", at=0.0) == []
    assert joiner.add(PHONE, 7, 3, 1, "A", at=0.1) == []
    assert joiner.add(PHONE, 7, 3, 1, "A", at=0.2) == []  # a repeated part changes nothing
    assert joiner.add(PHONE, 7, 3, 2, "B", at=0.3) == [(PHONE, "ABC", True, ())]
    assert joiner.expire(now=1000.0) == []


def test_two_senders_using_the_same_reference_are_kept_apart() -> None:
    joiner = Reassembler()
    joiner.add(PHONE, 1, 2, 1, "yes ", at=0.0)
    joiner.add(OTHER, 1, 2, 1, "no ", at=0.0)
    assert joiner.add(OTHER, 1, 2, 2, "thanks", at=0.1) == [(OTHER, "no thanks", True, ())]
    assert joiner.add(PHONE, 1, 2, 2, "please", at=0.1) == [(PHONE, "yes please", True, ())]


def test_a_text_missing_a_part_is_released_with_a_gap_after_the_timeout() -> None:
    joiner = Reassembler(timeout=60.0)
    joiner.add(PHONE, 9, 3, 1, "Call me ", at=0.0)
    joiner.add(PHONE, 9, 3, 3, " please", at=1.0)

    assert joiner.expire(now=59.0) == []
    assert joiner.expire(now=60.0) == [(PHONE, "Call me […] please", False, ())]
    assert joiner.expire(now=120.0) == []


def test_a_single_part_text_and_a_part_that_makes_no_sense_pass_straight_through() -> None:
    joiner = Reassembler()
    assert joiner.add(PHONE, 0, 1, 1, "STOP", at=0.0) == [(PHONE, "STOP", True, ())]
    assert joiner.add(PHONE, 3, 2, 5, "odd", at=0.0) == [(PHONE, "odd", True, ())]


def test_a_flood_of_unfinished_texts_releases_the_oldest_instead_of_growing() -> None:
    joiner = Reassembler(max_pending=2)
    joiner.add(PHONE, 1, 2, 1, "first", at=0.0)
    joiner.add(PHONE, 2, 2, 1, "second", at=1.0)
    assert joiner.add(PHONE, 3, 2, 1, "third", at=2.0) == [(PHONE, "first[…]", False, ())]


@pytest.mark.parametrize("name", ["Zoë", "Zoe"])  # UCS-2 and GSM-7
def test_what_the_sender_splits_the_joiner_puts_back_together(name: str) -> None:
    text = f"{name} says: " + "call me back after five, please. " * 8
    encoded = split(text, reference=0x21)
    assert len(encoded.parts) > 1
    joiner = Reassembler()
    released = []
    for part in reversed(encoded.parts):
        piece, udh = decode(part, encoded.data_coding, encoded.esm_class)
        reference, total, number = concatenation(udh) or (0, 1, 1)
        released += joiner.add(PHONE, reference, total, number, piece, at=0.0)
    assert released == [(PHONE, text, True, ())]


def test_each_part_s_tag_comes_back_with_the_text_it_ends_up_in_repeats_too() -> None:
    joiner: Reassembler[str] = Reassembler(timeout=60.0)
    assert joiner.add(PHONE, 4, 2, 2, "B", at=0.0, tag="second") == []
    assert joiner.add(PHONE, 4, 2, 2, "B", at=0.1, tag="second again") == []
    [released] = joiner.add(PHONE, 4, 2, 1, "A", at=0.2, tag="first")
    assert (released.text, released.whole) == ("AB", True)
    assert released.tags == ("second", "second again", "first")

    joiner.add(PHONE, 5, 2, 1, "half", at=0.0, tag="lonely")
    [late] = joiner.expire(now=60.0)
    assert (late.text, late.whole, late.tags) == ("half[…]", False, ("lonely",))
    assert joiner.add(PHONE, 0, 1, 1, "STOP", at=0.0, tag="single")[0].tags == ("single",)

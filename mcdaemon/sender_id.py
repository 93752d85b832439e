"""The sender address of the texts: the source_addr and its TON/NPI."""

from __future__ import annotations

from .config import SmppConfig


def source_numbering(config: SmppConfig) -> tuple[str, int, int]:
    """(source_addr, TON, NPI): alphanumeric 5/0, international 1/1, short code 3/0."""
    address = config.source_addr
    digits = address.lstrip("+")
    if digits.isdigit():
        ton, npi = (1, 1) if address.startswith("+") or len(digits) > 8 else (3, 0)
        address = digits
    else:
        ton, npi = 5, 0
    if config.source_ton is not None:
        ton = config.source_ton
    if config.source_npi is not None:
        npi = config.source_npi
    return address, ton, npi

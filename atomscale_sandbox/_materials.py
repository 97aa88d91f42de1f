"""A small built-in table of common thin-film materials, to fill in `space_group` and `mp_id`.

The real service fills both fields "if matched" against a materials database; the
sandbox matches against this table instead. A layer matches an entry when its element
amounts are those of the entry's formula up to a common factor: element order and
explicit 1s do not matter (`Ti1Sr1O3` and `Sr2Ti2O6` both match SrTiO3), but any other
difference does, so doped or fractional compositions such as `SrTi0.8Nb0.2O3` match
nothing. Where one composition has several structures, the table holds the one usually
grown as a film (anatase for TiO2, corundum for Al2O3, beta for Ga2O3).

Materials Project ids are given only where we are sure of them; entries whose id we
could not confirm offline fill in the space group and leave `mp_id` null.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

from atomscale_chemistry.formula import parse_formula

__all__ = ["MATERIALS", "KnownMaterial", "match_material"]


@dataclass(frozen=True)
class KnownMaterial:
    """One entry of the built-in table.

    Attributes:
        formula: The formula as usually written, e.g. `"BaTiO3"`.
        space_group: Hermann-Mauguin symbol of its usual thin-film structure.
        mp_id: Materials Project id of that structure, or `None` if not confirmed.
    """

    formula: str
    space_group: str
    mp_id: str | None


MATERIALS: tuple[KnownMaterial, ...] = (
    # Perovskite oxides: films and the substrates they are grown on.
    KnownMaterial("BaTiO3", "P4mm", "mp-5020"),
    KnownMaterial("SrTiO3", "Pm-3m", "mp-5229"),
    KnownMaterial("PbTiO3", "P4mm", "mp-20459"),
    KnownMaterial("BiFeO3", "R3c", "mp-24932"),
    KnownMaterial("LaAlO3", "R-3c", "mp-2920"),
    KnownMaterial("LiNbO3", "R3c", "mp-3731"),
    KnownMaterial("LaNiO3", "R-3c", None),
    KnownMaterial("SrRuO3", "Pnma", None),
    KnownMaterial("LaMnO3", "Pnma", None),
    KnownMaterial("NdGaO3", "Pnma", None),
    KnownMaterial("DyScO3", "Pnma", None),
    # Other oxides.
    KnownMaterial("MgO", "Fm-3m", "mp-1265"),
    KnownMaterial("Al2O3", "R-3c", "mp-1143"),
    KnownMaterial("MgAl2O4", "Fd-3m", "mp-3536"),
    KnownMaterial("TiO2", "I4_1/amd", "mp-390"),
    KnownMaterial("ZnO", "P6_3mc", "mp-2133"),
    KnownMaterial("Ga2O3", "C2/m", "mp-886"),
    # Semiconductors.
    KnownMaterial("Si", "Fd-3m", "mp-149"),
    KnownMaterial("Ge", "Fd-3m", "mp-32"),
    KnownMaterial("GaAs", "F-43m", "mp-2534"),
    KnownMaterial("GaP", "F-43m", "mp-2490"),
    KnownMaterial("InP", "F-43m", "mp-20351"),
    KnownMaterial("InAs", "F-43m", "mp-20305"),
    KnownMaterial("GaN", "P6_3mc", "mp-804"),
    KnownMaterial("AlN", "P6_3mc", "mp-661"),
)

_Signature = frozenset[tuple[str, Fraction]]


def _signature(element_amounts: Mapping[str, float]) -> _Signature | None:
    """The amounts divided by their greatest common divisor, so multiples compare equal."""
    try:
        # limit_denominator turns 0.1 + 0.2 style float noise into the intended ratio.
        amounts = {
            element: Fraction(amount).limit_denominator(1000)
            for element, amount in element_amounts.items()
        }
    except (ValueError, OverflowError, TypeError):
        return None
    if not amounts or any(amount <= 0 for amount in amounts.values()):
        return None
    numerators_gcd = math.gcd(*(amount.numerator for amount in amounts.values()))
    denominators_lcm = math.lcm(*(amount.denominator for amount in amounts.values()))
    common = Fraction(numerators_gcd, denominators_lcm)
    return frozenset((element, amount / common) for element, amount in amounts.items())


def _index() -> dict[_Signature, KnownMaterial]:
    index = {}
    for material in MATERIALS:
        signature = _signature(parse_formula(material.formula))
        assert signature is not None, f"unusable formula in the table: {material.formula}"
        index[signature] = material
    return index


_BY_SIGNATURE = _index()


def match_material(element_amounts: Mapping[str, float]) -> KnownMaterial | None:
    """The table entry with these element amounts (up to a common factor), if any.

    Args:
        element_amounts: Element symbol -> count or fraction, as in a layer's
            `element_dict`.

    Returns:
        The matching entry, or `None`.
    """
    try:
        amounts = frozenset(element_amounts.items())
    except TypeError:  # an unhashable amount: not a number, so no material
        return None
    return _match(amounts)


@functools.lru_cache(maxsize=4096)
def _match(amounts: frozenset[tuple[str, float]]) -> KnownMaterial | None:
    # Cached because every layer POST asks, mostly about the same few compositions.
    signature = _signature(dict(amounts))
    return None if signature is None else _BY_SIGNATURE.get(signature)

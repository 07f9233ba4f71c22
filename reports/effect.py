"""The minimum effect: how far a latency must move before a change counts, for compare and for
the trend's change points alike (``--min-effect 5%,0.5ms``: both margins must be met)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MinEffect:
    """A change counts only if it is at least ``rel`` (fraction) and ``abs_ms`` of the base."""

    rel: float = 0.05
    abs_ms: float = 0.5

    def met(self, base: float, cur: float) -> bool:
        """True when ``cur`` is worse (higher) than ``base`` by both margins."""
        return effect_sign(base, cur, self) > 0

    def met_down(self, base: float, cur: float) -> bool:
        return effect_sign(base, cur, self) < 0

    def describe(self) -> str:
        return f"at least {self.rel * 100:g}% and {self.abs_ms:g} ms"


def effect_sign(base: float, cur: float, e: MinEffect) -> int:
    """+1 worse by both margins, -1 better by both, 0 otherwise (nan, inf on both sides)."""
    if math.isnan(base) or math.isnan(cur) or (math.isinf(base) and math.isinf(cur)):
        return 0
    if math.isinf(cur):
        return 1
    if math.isinf(base):
        return -1
    delta = cur - base
    rel = abs(delta) / base if base > 0 else math.inf
    if abs(delta) >= e.abs_ms and rel >= e.rel:
        return 1 if delta > 0 else -1
    return 0


DEFAULT_EFFECT = MinEffect()


def parse_min_effect(text: str) -> MinEffect:
    """``5%,0.5ms`` (either part may be left out) -> :class:`MinEffect`."""
    rel, abs_ms = MinEffect().rel, MinEffect().abs_ms
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            if part.endswith("%"):
                rel = float(part[:-1]) / 100
            elif part.endswith("ms"):
                abs_ms = float(part[:-2])
            else:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"min effect {text!r}: part {part!r} is neither N% nor Nms; example: 5%,0.5ms"
            ) from None
    if rel < 0 or abs_ms < 0:
        raise ValueError(f"min effect {text!r}: margins must be >= 0")
    return MinEffect(rel, abs_ms)

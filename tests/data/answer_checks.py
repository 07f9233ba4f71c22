"""A scenario's own answer validator (``answers.validator: answer_checks:distinct_items``),
used by the answer calibration test: called with the parsed answer and the request."""

from __future__ import annotations

from typing import Any


def distinct_items(answer: Any, request: dict[str, Any]) -> list[str]:
    items = answer.get("items") if isinstance(answer, dict) else None
    if not isinstance(items, list):
        return ["no items list"]
    if len(set(items)) != len(items):
        return [f"repeated items for user {request['user_id']}"]
    return []

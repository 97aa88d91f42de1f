"""A process's views of target materials stay bounded, however many stacks it writes."""

from __future__ import annotations

from prefect_atomscale import Layer
from prefect_atomscale._views import _LAYER_LIMIT, material_views


def test_views_hold_at_most_the_layer_limit_and_keep_the_newest() -> None:
    keys = [f"views-test/{number}" for number in range(30)]
    for number, key in enumerate(keys):
        layers = [
            Layer(id=number * 10_000 + position, layer_id=position, sample_id=number + 1)
            for position in range(1, 1_001)
        ]
        material_views.load(key, layers)
    held = sum(view.size() for view in material_views._views.values())
    assert held <= _LAYER_LIMIT
    assert held == material_views._held
    newest = material_views.current(keys[-1])
    assert newest is not None and newest.size() == 1_000
    assert material_views.current(keys[0]) is None  # the oldest went first
    for key in keys:
        material_views.forget(key)

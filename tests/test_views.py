"""A process's views of target materials: trusted only at their version, and bounded."""

from __future__ import annotations

from prefect_atomscale import Layer
from prefect_atomscale._views import _LAYER_LIMIT, material_views


def _layer(record: int, position: int, sample_id: int = 1) -> Layer:
    return Layer(id=record, layer_id=position, sample_id=sample_id)


def test_views_hold_at_most_the_layer_limit_and_keep_the_newest() -> None:
    keys = [f"views-test/{number}" for number in range(30)]
    for number, key in enumerate(keys):
        layers = [
            _layer(number * 10_000 + position, position, number + 1) for position in range(1, 1_001)
        ]
        material_views.load(key, slot=number, version=0, layers=layers, creator=None)
    held = sum(view.size() for view in material_views._views.values())
    assert held <= _LAYER_LIMIT
    assert held == material_views._held
    newest = material_views.current(keys[-1], 0)
    assert newest is not None and newest.size() == 1_000
    assert material_views.current(keys[0], 0) is None  # the oldest went first
    for key in keys:
        material_views.forget(key)


def test_a_listing_that_raced_another_write_is_never_trusted_after_it() -> None:
    """L2/L3: the view is stamped with the version read *before* its listing was sent.

    Another writer's bumps (before and after its write) move the version on; the view
    made from a listing that may or may not show that write is not trusted at the new
    version, whatever the listing held.
    """
    key = "views-test/raced"
    read_before_listing = 7
    # ... the listing is sent; meanwhile another process writes: 7 -> 8 -> 9 ...
    material_views.load(key, slot=3, version=read_before_listing, layers=[], creator=None)
    assert material_views.current(key, 9) is None
    assert material_views.current(key, 7) is not None  # nothing happened: trusted
    material_views.forget(key)


def test_only_this_process_own_write_moves_its_view_and_adds_the_layer_at_once() -> None:
    key = "views-test/own"
    material_views.load(key, slot=5, version=10, layers=[_layer(1, 1)], creator="me")
    material_views.advance(5, 10, 11)  # our bump before the write
    material_views.wrote(key, (5, 11, 12), created=[_layer(2, 2)])  # and after it
    view = material_views.current(key, 12)
    assert view is not None
    assert [layer.id for layer in view.layers()] == [1, 2]
    # A view of another slot, or at another version, is left alone.
    material_views.load("views-test/other", slot=6, version=11, layers=[], creator=None)
    material_views.advance(5, 11, 12)
    assert material_views.current("views-test/other", 11) is not None
    material_views.forget(key)
    material_views.forget("views-test/other")


def test_a_layer_the_listing_already_showed_is_not_counted_twice() -> None:
    key = "views-test/dedupe"
    material_views.load(key, slot=1, version=0, layers=[_layer(5, 1)], creator=None)
    material_views.wrote(key, (1, 0, 1), created=[_layer(5, 1)])
    view = material_views.current(key, 1)
    assert view is not None and view.size() == 1
    material_views.forget(key)

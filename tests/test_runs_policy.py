"""rgt.runs' pure policy: which machines a run avoids, and when moving to a cheaper offer pays."""

from __future__ import annotations

from rgt.runs import MOVE_HORIZON_SECONDS, worth_moving


def test_a_much_cheaper_offer_is_worth_a_move_over_the_remaining_work() -> None:
    assert worth_moving(
        0.10, 0.06, restart_seconds=120, at_risk_seconds=60, remaining_seconds=6 * 3600
    )


def test_an_offer_cheaper_by_less_than_the_margin_is_not_worth_a_move() -> None:
    assert not worth_moving(0.10, 0.08, margin=0.25, restart_seconds=0, at_risk_seconds=0)
    assert worth_moving(0.10, 0.08, margin=0.15, restart_seconds=0, at_risk_seconds=0)


def test_a_margin_of_zero_never_moves() -> None:
    assert not worth_moving(0.10, 0.01, margin=0, restart_seconds=0, at_risk_seconds=0)


def test_near_the_end_of_the_work_a_move_does_not_pay_for_its_restart() -> None:
    # A 2 min restart plus 1 min of redone work at $0.06/h costs $0.0030. Saving $0.04/h over
    # the last 3 minutes is $0.0020 (not worth it); over the last 10 minutes, $0.0067 (worth it).
    assert not worth_moving(
        0.10, 0.06, restart_seconds=120, at_risk_seconds=60, remaining_seconds=180
    )
    assert worth_moving(0.10, 0.06, restart_seconds=120, at_risk_seconds=60, remaining_seconds=600)


def test_unknown_remaining_work_is_judged_over_the_horizon() -> None:
    # Saving $0.03/h over the horizon vs the restart at the new price: the at-risk work decides.
    at_risk = MOVE_HORIZON_SECONDS * 0.03 / 0.07 - 120 + 1  # just more than the horizon saves
    assert not worth_moving(0.10, 0.07, restart_seconds=120, at_risk_seconds=at_risk)
    assert worth_moving(0.10, 0.07, restart_seconds=120, at_risk_seconds=at_risk - 10)

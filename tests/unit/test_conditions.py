from datetime import UTC, datetime, timedelta

import pytest

from tokenbridge.conditions import FALSE, TRUE, get_condition, rfc3339, set_condition

T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_new_condition_gets_transition_time_and_generation():
    conditions = set_condition(None, "Ready", TRUE, "Ready", "all good", 3, T0)
    assert conditions == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Ready",
            "message": "all good",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
            "observedGeneration": 3,
        }
    ]


def test_unchanged_status_keeps_transition_time_but_updates_reason_message_generation():
    first = set_condition([], "Ready", FALSE, "DiscoveryUnavailable", "down", 1, T0)
    second = set_condition(first, "Ready", FALSE, "NoUsableKeys", "no keys", 2, T1)
    assert second[0]["lastTransitionTime"] == rfc3339(T0)
    assert (second[0]["reason"], second[0]["message"]) == ("NoUsableKeys", "no keys")
    assert second[0]["observedGeneration"] == 2
    assert first[0]["reason"] == "DiscoveryUnavailable", "the input list is not modified"


def test_changed_status_moves_transition_time():
    first = set_condition([], "Ready", FALSE, "DiscoveryUnavailable", "down", 1, T0)
    second = set_condition(first, "Ready", TRUE, "Ready", "up", 1, T1)
    assert second[0]["lastTransitionTime"] == rfc3339(T1)


def test_other_conditions_and_order_are_kept():
    conditions = set_condition([], "Ready", TRUE, "Ready", "", 1, T0)
    conditions = set_condition(conditions, "Discovered", TRUE, "Discovered", "", 1, T0)
    conditions = set_condition(conditions, "Ready", FALSE, "X", "", 1, T1)
    assert [c["type"] for c in conditions] == ["Ready", "Discovered"]
    assert [c["status"] for c in conditions] == [FALSE, TRUE]
    assert get_condition(conditions, "Missing") is None


def test_invalid_status_is_refused():
    with pytest.raises(ValueError):
        set_condition([], "Ready", "Yes", "X", "", 1, T0)

"""What a DeleteGroups answer means to `orders offsets delete`."""

from __future__ import annotations

import pytest

from app.operations.group_delete import Verdict, judge_delete


@pytest.mark.parametrize(
    ("error_code", "verdict"),
    [
        (0, Verdict.DELETED),
        (69, Verdict.NOT_FOUND),  # GROUP_ID_NOT_FOUND: nothing to delete in Kafka
        (68, Verdict.NOT_EMPTY),  # NON_EMPTY_GROUP: a member joined
        (14, Verdict.RETRY),  # COORDINATOR_LOAD_IN_PROGRESS
        (15, Verdict.RETRY),  # COORDINATOR_NOT_AVAILABLE
        (16, Verdict.RETRY),  # NOT_COORDINATOR: the group moved
        (30, Verdict.FAILED),  # GROUP_AUTHORIZATION_FAILED: asking again changes nothing
        (24, Verdict.FAILED),  # INVALID_GROUP_ID
        (-1, Verdict.FAILED),  # UNKNOWN_SERVER_ERROR
    ],
)
def test_each_answer_has_one_meaning(error_code: int, verdict: Verdict) -> None:
    assert judge_delete(error_code) is verdict

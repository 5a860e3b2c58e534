"""Row locks: concurrent votes and concurrent requests serialise on the row they depend on, so the
two-person rule cannot stall and a quota cannot be spent twice."""

from __future__ import annotations

import threading
import time

from tests.api.conftest import PURPOSE


def _in_thread(fn):
    result: dict = {}

    def run():
        try:
            result["value"] = fn()
        except Exception as exc:  # surfaced by the test's asserts
            result["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, result


def test_concurrent_votes_complete_the_two_person_rule(researcher, admin, admin2, dataset_at, settings_env):
    from service.accounts.models import Account
    from service.accounts.service import actor_of
    from service.datasets.models import Dataset
    from service.db import get_sessionmaker, session_scope
    from service.reviews.models import Decision
    from service.reviews.service import cast_vote

    settings_env(reviews_required=2)
    ds_id = dataset_at(researcher, "pending_review")

    first = get_sessionmaker()()
    a1 = first.get(Account, admin.id)
    _, approved = cast_vote(first, dataset_id=ds_id, reviewer=a1, actor=actor_of(a1), decision=Decision.approve, reason="a")
    assert approved is False  # holds the row lock, not yet committed

    def second_vote():
        with session_scope() as s:
            a2 = s.get(Account, admin2.id)
            return cast_vote(s, dataset_id=ds_id, reviewer=a2, actor=actor_of(a2), decision=Decision.approve, reason="b")[1]

    thread, result = _in_thread(second_vote)
    time.sleep(0.5)
    assert thread.is_alive(), "the second vote must wait for the first one's row lock"
    first.commit()
    first.close()
    thread.join(10)
    assert result.get("value") is True, result
    with session_scope() as s:
        assert s.get(Dataset, ds_id).status.value == "approved"


def test_concurrent_requests_cannot_overspend_the_quota(make_user, model):
    from service.accounts.models import Account
    from service.accounts.service import actor_of
    from service.datasets.schemas import DatasetCreate
    from service.datasets.service import create_dataset
    from service.db import get_sessionmaker, session_scope
    from service.errors import Unprocessable

    user = make_user("researcher", image_quota=10)
    body = DatasetCreate(conditions={"Mass": 6}, purpose=PURPOSE)
    first = get_sessionmaker()()
    acc = first.get(Account, user.id)
    create_dataset(first, account=acc, actor=actor_of(acc), data=body)

    def second():
        with session_scope() as s:
            acc2 = s.get(Account, user.id)
            return create_dataset(s, account=acc2, actor=actor_of(acc2), data=body)

    thread, result = _in_thread(second)
    time.sleep(0.5)
    assert thread.is_alive(), "the second request must wait for the account lock"
    first.commit()
    first.close()
    thread.join(10)
    assert isinstance(result.get("error"), Unprocessable) and result["error"].code == "quota_exceeded"


def test_units_of_work_beyond_route_threads_wait_their_turn_in_arrival_order(infra, settings_env):
    import anyio

    from service.deps import one_hop

    settings_env(route_threads=2)
    lock = threading.Lock()
    running, peak, started = 0, 0, []

    def route(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            started.append(n)
        time.sleep(0.1)
        with lock:
            running -= 1
        return n

    hop = one_hop(route)

    async def eight_clients() -> list[int]:
        answers: list[int] = []

        async def client(n: int) -> None:
            answers.append(await hop(n=n))

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(client, n)
                await anyio.sleep(0.02)  # they arrive one after another
        return answers

    answers = anyio.run(eight_clients)
    assert sorted(answers) == list(range(8))  # every request answered
    assert peak == 2  # never more threads than the setting
    assert started == list(range(8))  # a waiting request is not overtaken

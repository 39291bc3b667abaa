"""Single flight across the chunks of one job: one chunk asks the model about a vendor, the others wait for it.

Chunks of a fanned-out job run at once and meet the same vendors. Without this, each asked about a vendor the
others were already asking about, and the duplicates spent the provider's quota (a fifth more requests at
20,000 lines). Before asking, a chunk claims its vendors: one conditional put per vendor, up to 100 in a
transaction, whose cancellation reasons say which vendors another chunk holds. It asks about the ones it won;
for the rest it waits until their answers reach the vendor cache (the holder writes them at once), and takes
over any claim its holder gave back (a request it could not make) or let lapse (a worker that died).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from pynamodb.exceptions import TransactWriteError
from pynamodb.transactions import TransactWrite

from chalicelib.categorize import cache
from chalicelib.tables import VendorClaim, connection

TRANSACTION_ITEMS = 100
POLL_SECONDS = 0.25


def _key(job_id: str, categories: list[str], vendor: str) -> str:
    # A claim is one job's (jobs are never shared between tenants), so it needs no tenant in its key.
    return f"claim#{job_id}#{cache.taxonomy_id(categories)}#{vendor}"


def take(job_id: str, categories: list[str], vendors: list[str], owner: str,
         hold_seconds: float) -> tuple[list[str], list[str]]:
    """(the vendors now claimed by `owner`, the vendors another live claim holds)."""
    now = time.time()
    # free: nobody holds it, its holder's time is up, or this invocation holds it already (it asks again).
    free = VendorClaim.cache_key.does_not_exist() | (VendorClaim.until < now) | (VendorClaim.owner == owner)
    mine: list[str] = []
    free_now = set(_free(job_id, categories, vendors, owner))  # a read first: a refused put still costs a write
    theirs = [v for v in vendors if v not in free_now]
    wanted = [v for v in vendors if v in free_now]
    try:
        for start in range(0, len(wanted), TRANSACTION_ITEMS):
            todo = wanted[start:start + TRANSACTION_ITEMS]
            while todo:
                try:
                    with TransactWrite(connection=connection()) as tx:
                        for vendor in todo:
                            tx.save(VendorClaim(_key(job_id, categories, vendor), owner=owner,
                                                until=now + hold_seconds, expires_at=timedelta(hours=1)),
                                    condition=free)
                except TransactWriteError as err:
                    # ConditionalCheckFailed: another chunk holds it. TransactionConflict: another chunk's claim
                    # on it was being written at that moment; waited for like a held one, wait_for takes it
                    # over if it turns out free.
                    reasons = err.cancellation_reasons or []
                    held = [v for v, r in zip(todo, reasons, strict=False)
                            if r is not None and r.code in ("ConditionalCheckFailed", "TransactionConflict")]
                    if not held:
                        raise  # throttled or failed: the batch is redone
                    theirs += held
                    todo = [v for v in todo if v not in set(held)]
                    continue
                mine += todo
                break
    except BaseException:
        give_back(job_id, categories, mine)  # what the earlier transactions won, or the others wait it out
        raise
    return mine, theirs


def give_back(job_id: str, categories: list[str], vendors: list[str]) -> None:
    """Release claims whose vendors this owner will not answer now (a request it did not make, an answer flagged).

    Unconditional deletes in BatchWriteItems: if our claim had lapsed and another chunk took it over, deleting
    theirs costs at most one more request about that vendor, never a line.
    """
    if not vendors:
        return
    with VendorClaim.batch_write() as batch:
        for vendor in vendors:
            batch.delete(VendorClaim(_key(job_id, categories, vendor)))


def _free(job_id: str, categories: list[str], vendors: list[str], owner: str) -> list[str]:
    """The vendors whose claim is gone, lapsed or ours: one read (BatchGetItem per 100), no write."""
    keys = {_key(job_id, categories, v): v for v in vendors}
    now = time.time()
    held = {c.cache_key for c in VendorClaim.batch_get(list(keys)) if c.owner != owner and float(c.until) >= now}
    return [v for k, v in keys.items() if k not in held]


def wait_for(job_id: str, categories: list[str], vendors: list[str], model: str, owner: str, hold_seconds: float,
             ask: Callable[[list[str]], dict], deadline: float, *, tenant: str) -> dict:
    """Answers for `vendors` that other chunks claimed: read from the cache as they land; a claim given back
    or lapsed is taken over and asked about with `ask`. Past `deadline` (this invocation's budget), whatever
    is still missing is asked about directly. Each poll is reads only, unless a claim came free."""
    found: dict = {}
    waiting = list(vendors)
    while waiting:
        found.update(cache.lookup(categories, waiting, model, job_id, tenant=tenant))
        waiting = [v for v in waiting if v not in found]
        if not waiting:
            break
        if time.monotonic() > deadline:
            found.update(ask(waiting))
            break
        mine, _ = take(job_id, categories, waiting, owner, hold_seconds)  # writes only if a claim came free
        if mine:
            found.update(ask(mine))
            waiting = [v for v in waiting if v not in found]
        if waiting:
            time.sleep(POLL_SECONDS)
    return found

"""Workflows: chain, group and chord with immutable signatures, an errback, and a partial-failure policy.

Partial-failure policy for the group of orders: a chord's callback runs only if *every* header task succeeds, and one
raising task discards the results of all the others. So header tasks report item-level problems (a bad order) as an
outcome {"status": "rejected", ...} instead of raising; the callback counts them. Only unexpected errors fail the
chord, and then the errback records the whole batch as a dead letter for an operator to look at and replay.
"""

import logging
from decimal import Decimal
from typing import Any

from celery import chain, chord, group
from celery.result import AsyncResult

from ..celery_app import app
from ..config.settings import settings
from ..runtime import deadletters, idempotency
from .notifications import send_receipt
from .payloads import InvalidPayload, Order, parse
from .prices import fetch_price

logger = logging.getLogger(__name__)


# convert_order and summarize compute from their arguments only: a re-run returns the same result and acts on nothing.
# A chord's header tasks must store results: the chord counts them and hands them to the callback.
@app.task(ignore_result=False)
def convert_order(rate: str, payload: dict[str, Any]) -> dict[str, str]:
    """Header task: gets the rate from fetch_price (the chain passes it first), and one order."""
    try:
        order = parse(Order, payload)
    except InvalidPayload as exc:
        return {"order_id": str(payload.get("order_id", "?")), "status": "rejected", "reason": str(exc)}
    converted = (order.amount * Decimal(rate)).quantize(Decimal("0.01"))
    return {"order_id": order.order_id, "status": "ok", "amount": str(converted)}


# The workflow's outcome: settle()'s caller reads it.
@app.task(ignore_result=False)
def summarize(outcomes: list[dict[str, str]]) -> dict[str, Any]:
    accepted = [o for o in outcomes if o["status"] == "ok"]
    return {
        "accepted": len(accepted),
        "rejected": [o["order_id"] for o in outcomes if o["status"] != "ok"],
        "total": str(sum((Decimal(o["amount"]) for o in accepted), Decimal("0"))),
    }


@app.task
def settlement_failed(request: Any, exc: BaseException, traceback: Any, batch_id: str) -> None:
    """Errback: called in the worker where a step failed; records the batch so nothing is lost silently."""
    # Once per failed task: that step may be delivered again (a lost ack) and fail again, and a second entry would let
    # an operator replay the batch twice. Called directly, not as a message, so it cannot retry.
    name, token = f"settlement_failed:{request.id}", idempotency.new_token()
    state = idempotency.claim(name, token, settings.task_time_limit + idempotency.LOCK_MARGIN)
    if state is idempotency.Claim.DONE:
        return
    if state is idempotency.Claim.BUSY:
        # An earlier delivery claimed it and died before recording (or is recording right now): a second entry is
        # better than none. Never skipped on a busy claim: the batch would be lost silently.
        logger.warning("settlement_failed %s: claim busy, recording anyway (the entry may appear twice)", batch_id)
    try:
        deadletters.record(f"settlement-{batch_id}", "settlement", [batch_id], {}, f"{type(exc).__name__}: {exc}")
    except BaseException:
        idempotency.release(name, token)  # the next delivery of the failed step records it
        raise
    idempotency.mark_done(name, token, give_up_after=settings.task_time_limit)


def settle(batch_id: str, orders: list[dict[str, Any]], pair: str = "EURUSD") -> AsyncResult[Any]:
    """Fetch a rate, convert every order in parallel, summarize; the result is the summary."""
    summary = summarize.s()
    # .si() makes the signature immutable: the receipt needs the batch id, not the summary passed to links.
    summary.link(send_receipt.si(f"batch-{batch_id}"))
    workflow = chain(fetch_price.s(pair), chord(group(convert_order.s(order) for order in orders), summary))
    return workflow.apply_async(link_error=settlement_failed.s(batch_id))

"""A customer-support bot: classify the ticket, route it, call a tool, write the answer.

    classify (model) -> route (branch) -> refund | order_status | (nothing) -> answer (model)

Refunds above a limit wait for a person's approval (a human step). The model here is a
deterministic offline stand-in, so the example runs anywhere without a network or a key.

Run it with ``make demo`` or ``python examples/support_bot.py``.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Dict, Optional

import ferroflow as ff

REFUND_APPROVAL_LIMIT = 100.0

ORDERS: Dict[str, Dict[str, Any]] = {
    "A100": {"item": "kettle", "price": 35.0, "status": "shipped", "eta": "2 days"},
    "A200": {"item": "espresso machine", "price": 420.0, "status": "delivered", "eta": None},
    "A300": {"item": "mug set", "price": 18.5, "status": "processing", "eta": "5 days"},
}


class OfflineModel:
    """A deterministic stand-in for a chat model: same prompt, same reply."""

    def complete(self, system: str, user: str) -> str:
        if system.startswith("Classify"):
            text = user.lower()
            if any(w in text for w in ("refund", "money back", "return")):
                return "refund"
            if any(w in text for w in ("where", "status", "track", "arrive")):
                return "order_status"
            return "other"
        return f"[support] {user}"


model = OfflineModel()
support = ff.Graph("support_bot", output="answer")


def order_id(text: str) -> Optional[str]:
    match = re.search(r"\b([A-Z]\d{3})\b", text)
    return match.group(1) if match else None


@support.task(retry=ff.Retry(attempts=3, backoff=0.05))
def classify(input: Dict[str, Any]) -> str:
    return model.complete("Classify the ticket as refund, order_status or other.", input["text"])


@support.branch(labels=["refund", "order_status", "other"])
def route(classify: str) -> str:
    return classify


@support.task(when={"route": "refund"})
def refund(input: Dict[str, Any]) -> Dict[str, Any]:
    oid = order_id(input["text"])
    order = ORDERS.get(oid or "")
    if order is None:
        return {"order": oid, "eligible": False, "reason": "no such order"}
    return {"order": oid, "eligible": True, "amount": order["price"], "item": order["item"]}


@support.branch(labels=["ask", "auto"])
def needs_approval(refund: Dict[str, Any]) -> str:
    return "ask" if refund["eligible"] and refund["amount"] > REFUND_APPROVAL_LIMIT else "auto"


@support.human(when={"needs_approval": "ask"})
def approve(refund: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Large refunds need a person; the payload is what they see."""
    return {"question": f"Approve a refund of {refund.get('amount')} for order {refund['order']}?", "refund": refund}


@support.task(when={"route": "order_status"})
def order_status(input: Dict[str, Any]) -> Dict[str, Any]:
    oid = order_id(input["text"])
    order = ORDERS.get(oid or "")
    return {"order": oid, "found": order is not None, **(order or {})}


@support.task
def answer(
    input: Dict[str, Any],
    refund: Optional[Dict[str, Any]],
    approve: Optional[Dict[str, Any]],
    order_status: Optional[Dict[str, Any]],
) -> str:
    if refund is not None:
        if approve is not None and not approve.get("approved"):
            facts = "We cannot refund this order; a colleague will explain why by email."
        elif not refund["eligible"]:
            facts = f"We could not find order {refund['order']}; please check the number."
        else:
            facts = f"Your refund of {refund['amount']:.2f} for the {refund['item']} is on its way."
    elif order_status is not None:
        if not order_status["found"]:
            facts = f"We could not find order {order_status['order']}."
        elif order_status["eta"]:
            facts = f"Your {order_status['item']} is {order_status['status']}, arriving in {order_status['eta']}."
        else:
            facts = f"Your {order_status['item']} was {order_status['status']}."
    else:
        facts = "Thanks for reaching out; a colleague will get back to you shortly."
    return model.complete("Write a short, friendly reply.", f"Hi {input['customer']}! {facts}")


TICKETS = [
    {"customer": "Ada", "text": "Where is my order A100?"},
    {"customer": "Grace", "text": "I want a refund for order A300, the mugs arrived broken."},
    {"customer": "Linus", "text": "Do you ship to Norway?"},
    {"customer": "Barbara", "text": "Please refund order A200, the espresso machine leaks."},
]


async def show_events(ticket: Dict[str, Any]) -> None:
    print(f"\nEvents for {ticket['customer']}'s ticket:")
    async for event in support.stream(ticket):
        node = getattr(event, "node", "")
        print(f"  {event.seq:>2} {type(event).__name__:<14} {node}")


def main() -> None:
    print(support.to_mermaid())
    results = support.map(TICKETS[:3])
    for ticket, reply in zip(TICKETS, results):
        print(f"{ticket['customer']:>8}: {reply}")

    # A large refund waits for a person, then resumes with their decision.
    result = support.run(TICKETS[3])
    print(f"\nRun {result.run_id} is {result.status.value}: {result.waiting['approve']['question']}")
    result = support.resume(result.run_id, {"approved": True, "by": "supervisor"})
    print(f"{TICKETS[3]['customer']:>8}: {result.output}")

    asyncio.run(show_events(TICKETS[0]))


if __name__ == "__main__":
    main()

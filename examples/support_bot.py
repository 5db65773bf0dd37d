"""A customer-support bot: classify the ticket, route it, call a tool, write the answer.

    classify (model) -> route (branch) -> refund | order_status | (nothing) -> answer (model)

Refunds above a limit wait for a person's approval (a human step). With
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` set, the two model calls go to that
OpenAI-compatible endpoint (``SUPPORT_BOT_MODEL`` names the model); otherwise a
deterministic offline model answers, so the example runs anywhere without a network or a key.

Run it with ``make demo`` or ``python examples/support_bot.py``.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import ferroflow as ff

REFUND_APPROVAL_LIMIT = 100.0

ORDERS: Dict[str, Dict[str, Any]] = {
    "A100": {"item": "kettle", "price": 35.0, "status": "shipped", "eta": "2 days"},
    "A200": {"item": "espresso machine", "price": 420.0, "status": "delivered", "eta": None},
    "A300": {"item": "mug set", "price": 18.5, "status": "processing", "eta": "5 days"},
}


LABELS = ["refund", "order_status", "other"]


def reply_to(messages: List[Dict[str, Any]]) -> str:
    """What the offline model answers: a deterministic stand-in for a chat model (same
    prompt, same reply). Tests give it to the mock OpenAI server too, so that every
    provider gives the same results."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if system.startswith("Classify"):
        text = user.lower()
        if any(w in text for w in ("refund", "money back", "return")):
            return "refund"
        if any(w in text for w in ("where", "status", "track", "arrive")):
            return "order_status"
        return "other"
    return f"[support] {user}"


def provider_from_env() -> Tuple[Any, str]:
    """The OpenAI provider when ``OPENAI_BASE_URL`` or ``OPENAI_API_KEY`` is set (any
    OpenAI-compatible server: ``SUPPORT_BOT_MODEL`` names the model, ``gpt-4o-mini`` by
    default; ``SUPPORT_BOT_CLIENT=native`` picks ferroflow's native client over the
    ``openai`` package), the offline one otherwise."""
    if os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_KEY"):
        native = os.environ.get("SUPPORT_BOT_CLIENT") == "native"
        provider = ff.NativeOpenAIProvider() if native else ff.OpenAIProvider()
        return provider, os.environ.get("SUPPORT_BOT_MODEL", "gpt-4o-mini")
    return ff.OfflineProvider(lambda request: reply_to(request.messages)), "offline"


def order_id(text: str) -> Optional[str]:
    match = re.search(r"\b([A-Z]\d{3})\b", text)
    return match.group(1) if match else None


def look_up_refund(ticket: Dict[str, Any]) -> Dict[str, Any]:
    """The refund tool: whether the ticket's order can be refunded, and how much."""
    oid = order_id(ticket["text"])
    order = ORDERS.get(oid or "")
    if order is None:
        return {"order": oid, "eligible": False, "reason": "no such order"}
    return {"order": oid, "eligible": True, "amount": order["price"], "item": order["item"]}


def look_up_order(ticket: Dict[str, Any]) -> Dict[str, Any]:
    """The order-status tool."""
    oid = order_id(ticket["text"])
    order = ORDERS.get(oid or "")
    return {"order": oid, "found": order is not None, **(order or {})}


def write_facts(
    ticket: Dict[str, Any],
    refund: Optional[Dict[str, Any]],
    approve: Optional[Dict[str, Any]],
    order_status: Optional[Dict[str, Any]],
) -> str:
    """What the answer must tell the customer, from what the tools (and a person) said."""
    if refund is not None:
        if approve is not None and not approve.get("approved"):
            said = "We cannot refund this order; a colleague will explain why by email."
        elif not refund["eligible"]:
            said = f"We could not find order {refund['order']}; please check the number."
        else:
            said = f"Your refund of {refund['amount']:.2f} for the {refund['item']} is on its way."
    elif order_status is not None:
        if not order_status["found"]:
            said = f"We could not find order {order_status['order']}."
        elif order_status["eta"]:
            said = f"Your {order_status['item']} is {order_status['status']}, arriving in {order_status['eta']}."
        else:
            said = f"Your {order_status['item']} was {order_status['status']}."
    else:
        said = "Thanks for reaching out; a colleague will get back to you shortly."
    return f"Hi {ticket['customer']}! {said}"


def build(provider: Any, model: str) -> ff.Graph:
    """The support graph, its two model calls made by ``provider``."""
    support = ff.Graph("support_bot", output="answer")

    @support.llm(provider=provider, model=model, params={"temperature": 0}, retry=ff.Retry(attempts=3, backoff=0.05))
    def classify(input: Dict[str, Any]) -> List[Dict[str, str]]:
        return [
            {
                "role": "system",
                "content": "Classify the ticket as refund, order_status or other. Answer with the label.",
            },
            {"role": "user", "content": input["text"]},
        ]

    @support.branch(labels=LABELS)
    def route(classify: Dict[str, Any]) -> str:
        # A real model may add punctuation or capitals; anything else is "other".
        label = classify["text"].strip().strip(".").lower()
        return label if label in LABELS else "other"

    @support.tool(when={"route": "refund"})
    def refund(input: Dict[str, Any]) -> Dict[str, Any]:
        return look_up_refund(input)

    @support.branch(labels=["ask", "auto"])
    def needs_approval(refund: Dict[str, Any]) -> str:
        return "ask" if refund["eligible"] and refund["amount"] > REFUND_APPROVAL_LIMIT else "auto"

    @support.human(when={"needs_approval": "ask"})
    def approve(refund: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Large refunds need a person; the payload is what they see."""
        question = f"Approve a refund of {refund.get('amount')} for order {refund['order']}?"
        return {"question": question, "refund": refund}

    @support.tool(when={"route": "order_status"})
    def order_status(input: Dict[str, Any]) -> Dict[str, Any]:
        return look_up_order(input)

    # After `route` too: a ticket that needs neither tool still gets an answer.
    @support.task(after=["route"])
    def facts(
        input: Dict[str, Any],
        refund: Optional[Dict[str, Any]],
        approve: Optional[Dict[str, Any]],
        order_status: Optional[Dict[str, Any]],
    ) -> str:
        return write_facts(input, refund, approve, order_status)

    @support.llm(provider=provider, model=model, stream=True)
    def answer(facts: str) -> List[Dict[str, str]]:
        return [
            {"role": "system", "content": "Write a short, friendly reply to the customer with these facts."},
            {"role": "user", "content": facts},
        ]

    return support


support = build(*provider_from_env())


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
        if isinstance(event, ff.events.NodeProgress):
            print(f"     {'token':<14} {node}: {event.data['token']!r}")
        else:
            print(f"  {event.seq:>2} {type(event).__name__:<14} {node}")


def main() -> None:
    print(support.to_mermaid())
    results = support.map(TICKETS[:3])
    for ticket, reply in zip(TICKETS, results):
        print(f"{ticket['customer']:>8}: {reply['text']}")

    # A large refund waits for a person, then resumes with their decision.
    result = support.run(TICKETS[3])
    print(f"\nRun {result.run_id} is {result.status.value}: {result.waiting['approve']['question']}")
    result = support.resume(result.run_id, {"approved": True, "by": "supervisor"})
    print(f"{TICKETS[3]['customer']:>8}: {result.output['text']}")

    asyncio.run(show_events(TICKETS[0]))


if __name__ == "__main__":
    main()

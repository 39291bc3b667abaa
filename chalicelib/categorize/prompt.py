"""The categorization prompt, laid out for the provider's prompt cache.

Providers cache the longest prefix a request shares with recent ones, from 1,024 tokens up (OpenAI: exact prefix
matches only, in 128-token steps past the first 1,024). So everything that stays the same between a tenant's
requests comes first, in one system message: the instructions, the taxonomy and worked examples (`stable`). The
only part that changes, the items to categorize, is the last message. The stable part of the default taxonomy is
about 1,300 tokens; a small custom taxonomy keeps only the examples in its categories and adds a reference list
of vendor patterns (no categories), so it still reaches the cacheable size.

`cache_key` names the stable part for the provider's cache routing (`prompt_cache_key`): one per tenant and
taxonomy, a hash, so no tenant name or category leaves in it.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache

from chalicelib.auth import tenant_scope
from chalicelib.categorize.cache import taxonomy_id

CACHEABLE_TOKENS = 1024  # OpenAI's smallest cached prefix

INSTRUCTIONS = """You categorize business expense lines for an expense report.

The user's message is a JSON array of items. Each item has an "id", a "vendor" (the merchant as it appears on a \
card or bank statement, often abbreviated, upper-case, with store numbers, city names, payment-processor prefixes \
such as "SQ *", "TST*", "PAYPAL *" or "SP " and reference numbers) and a "description" (what the employee wrote, \
which may be empty, terse or in another language).

For every item, answer one object with:
- "id": the item's id, exactly as given;
- "category": the single best category from the allowed list below, spelled exactly as listed;
- "confidence": your confidence from 0 to 1 that the category is right.

Answer every id exactly once, and nothing else. Never invent an id, never answer an id twice, never leave one out.

How to decide:
1. The vendor decides first. Strip processor prefixes, store numbers, city names and reference numbers, then \
recognise the merchant: an airline is airfare, a hotel chain is lodging, a ride-hailing or taxi company is ground \
transportation, and so on.
2. When the vendor is ambiguous (a marketplace, a payment processor alone, a conglomerate that sells many things), \
let the description decide: "team lunch" at a marketplace is a meal, "toner" is office supplies.
3. When vendor and description disagree, prefer the vendor unless the description names a clearly different kind \
of purchase.
4. Fees that belong to a purchase (baggage fees, seat upgrades, resort fees, delivery fees, tips) take the \
category of that purchase.
5. Use the catch-all category (such as "Other") only when no other allowed category fits; never use it merely \
because you are unsure: pick the best category and lower the confidence instead.
6. Confidence: 0.9 and above when the merchant is well known and its category obvious; 0.7 to 0.9 when the \
category is likely but the merchant sells more than one kind of thing; below 0.7 when you are guessing. Lines \
under the team's confidence bar are checked by a person, so an honest low confidence is better than a confident \
wrong answer.
7. Categories are the company's taxonomy: use them as listed even if you would name them differently, and never \
answer a category that is not on the list.
"""

# (vendor as on a statement, description, the category it belongs to in the default taxonomy)
EXAMPLES: tuple[tuple[str, str, str], ...] = (
    ("DELTA AIR 0062345521", "flight to client meeting", "Airfare"),
    ("UNITED 0162334455667", "seat upgrade", "Airfare"),
    ("SOUTHWES 5262183399", "return flight", "Airfare"),
    ("LUFTHANSA 2207731", "", "Airfare"),
    ("MARRIOTT DOWNTOWN CHI", "hotel 2 nights", "Lodging"),
    ("HILTON GARDEN INN", "conference hotel", "Lodging"),
    ("AIRBNB * HMQ2ZD", "team offsite stay", "Lodging"),
    ("HYATT REGENCY SFO", "resort fee", "Lodging"),
    ("UBER *TRIP 8841", "ride to airport", "Ground Transportation"),
    ("LYFT *RIDE TUE 5PM", "", "Ground Transportation"),
    ("AMTRAK .COM 4410", "train to NYC", "Ground Transportation"),
    ("HERTZ RENT-A-CAR", "car rental", "Ground Transportation"),
    ("SFO PARKING GARAGE", "airport parking", "Ground Transportation"),
    ("SQ *BLUE BOTTLE COFFEE", "coffee with client", "Meals & Entertainment"),
    ("TST* THE GRILL ROOM", "client dinner", "Meals & Entertainment"),
    ("DOORDASH*CHIPOTLE", "team lunch", "Meals & Entertainment"),
    ("STARBUCKS STORE 10023", "", "Meals & Entertainment"),
    ("STAPLES 00117", "printer toner", "Office Supplies"),
    ("OFFICE DEPOT #2231", "notebooks and pens", "Office Supplies"),
    ("AMAZON MKTPLACE PMTS", "desk organizer", "Office Supplies"),
    ("GITHUB INC", "team plan", "Software & Subscriptions"),
    ("SLACK T0123ABCD", "monthly subscription", "Software & Subscriptions"),
    ("AWS EMEA", "cloud hosting", "Software & Subscriptions"),
    ("ADOBE *CREATIVE CLD", "", "Software & Subscriptions"),
    ("ZOOM.US 888-799-9666", "video meetings", "Software & Subscriptions"),
    ("VERIZON WRLS P2221", "phone bill", "Telecommunications"),
    ("COMCAST BUSINESS", "office internet", "Telecommunications"),
    ("VODAFONE ROAMING", "data roaming", "Telecommunications"),
    ("UDEMY ONLINE COURSE", "python course", "Training & Education"),
    ("COURSERA 44NJ", "certificate", "Training & Education"),
    ("EVENTBRITE *DEVCONF", "conference ticket", "Training & Education"),
    ("FEDEX 78223340", "shipped contracts", "Shipping & Postage"),
    ("USPS PO 0544", "stamps", "Shipping & Postage"),
    ("UPS*1Z999AA1", "return of equipment", "Shipping & Postage"),
    ("CITY OF SF PERMITS", "permit fee", "Other"),
    ("BANK SERVICE FEE", "wire fee", "Other"),
)


@lru_cache(maxsize=64)
def stable(categories: tuple[str, ...]) -> str:
    """The system message: the same for every request of one taxonomy (the cached prefix)."""
    allowed = set(categories)
    shown = [(v, d, c) for v, d, c in EXAMPLES if c in allowed]
    parts = [INSTRUCTIONS, "Allowed categories (answer one of these, spelled exactly): " + json.dumps(list(categories))]
    if shown:
        parts.append("Worked examples (item, then the answer row):\n" + "\n".join(
            f'{json.dumps({"id": f"e{n}", "vendor": v, "description": d})} -> '
            f'{json.dumps({"id": f"e{n}", "category": c, "confidence": 0.95 if d else 0.9})}'
            for n, (v, d, c) in enumerate(shown)))
    text = "\n\n".join(parts)
    if estimate(text) < CACHEABLE_TOKENS + 64:
        # Reference only, so the prefix reaches the cacheable size: the kind of purchase each vendor string is, in
        # words that are not this taxonomy's categories (an answer must still be one of those).
        text += ("\n\nVendor strings as they appear on statements, with the kind of purchase each one is (for "
                 "reference: these kinds are not categories; answer with the allowed categories only):\n"
                 + "\n".join(f"- {json.dumps(v)}, described {json.dumps(d or '(nothing)')}: a purchase of the kind "
                              f"usually filed as {c.lower()}" for v, d, c in EXAMPLES))
    return text


def estimate(text: str) -> int:
    """Tokens, roughly (about 4 characters a token for English), without a tokenizer."""
    return len(text) // 4


def messages(categories: list[str], items: list[dict[str, str]]) -> list[dict[str, str]]:
    """The request's messages: the stable part first, the items last."""
    return [{"role": "system", "content": stable(tuple(categories))},
            {"role": "user", "content": json.dumps(items)}]


def cache_key(tenant: str, categories: list[str]) -> str:
    """`prompt_cache_key`: one per tenant and taxonomy, a hash (no tenant name or category in it)."""
    digest = hashlib.sha256(f"{tenant_scope(tenant)}|{taxonomy_id(categories)}".encode()).hexdigest()
    return f"cat-{digest[:32]}"

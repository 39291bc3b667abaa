"""Imported lines carry the expiry DynamoDB's TTL reads (the template's side: tests/unit/test_prod_template_data.py)."""

from __future__ import annotations

import uuid


def test_imported_lines_carry_their_expiry():
    """Stored by import_lines with expiresAt in epoch seconds, which DynamoDB's TTL reads."""
    from chalicelib import clock
    from chalicelib.auth import Principal
    from chalicelib.lines.store import import_lines, line_expiry, owner_period
    from chalicelib.tables import ExpenseLine

    user = f"user-{uuid.uuid4().hex[:12]}"
    principal = Principal(user_id=user, roles=frozenset(), tenant=user, sub=user)
    before = clock.now()
    import_lines(principal, [{"lineId": "l-1", "date": "2024-01-15", "vendor": "ACME", "amount": "1.00",
                              "currency": "EUR", "description": ""}])
    raw = ExpenseLine.get(owner_period(user, "2024-01"), "l-1", consistent_read=True).serialize()
    expires = int(raw["expiresAt"]["N"])
    # An old month imported today: kept from the import, not swept away by the TTL days later.
    assert int(line_expiry("2024-01", before).timestamp()) <= expires <= int(
        line_expiry("2024-01", clock.now()).timestamp())

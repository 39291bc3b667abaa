"""Fair shares between tenants: who may take the next worker and the next turn at the provider's quota.

- `shares`: the rules, pure (weights, a snapshot of the fleet, who gives way to whom, a tenant's budget fraction).
- `demand`: the fleet's picture in DynamoDB (messages waiting per tenant, invocations running per tenant).
- `budget`: TenantGate, a tenant's requests through the shared limiter at its weighted share, burst when alone.
- `queue`: the work queue side: a message's fair-queue group, and deferring a message to the back of the queue.
"""

"""Provider failures, named as the retry policy's ErrorEquals name them."""

from __future__ import annotations


class ProviderError(Exception):
    """A model request failed; `name` is what retriers match on."""

    def __init__(self, name: str, message: str, retry_after: float | None = None, fatal: bool = False) -> None:
        super().__init__(message)
        self.name, self.message, self.retry_after, self.fatal = name, message, retry_after, fatal


class JobFatal(Exception):
    """The job cannot go on (bad key, no quota, unknown model): fail it with this message."""


class LongWait(Exception):
    """Waiting inline would idle the Lambda: checkpoint and come back after `seconds`."""

    def __init__(self, seconds: float, cause: Exception | None = None) -> None:
        super().__init__(f"wait {seconds:.1f}s")
        self.seconds, self.cause = seconds, cause
        self.answered: list = []  # answers got before the wait (pipeline.ask_model)


class QuotaBusy(LongWait):
    """The fleet's shared limiter has no turn for this request soon: the provider was not asked (limiter.py)."""


class RateLimitCeiling(JobFatal):
    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"The model provider kept rate-limiting this job ({seconds:.0f} s in total, over the configured "
            "ceiling). Raise your provider's rate limits or retry the job later.")


class RetriesExhausted(Exception):
    def __init__(self, cause: ProviderError) -> None:
        super().__init__(f"{cause.name}: {cause.message}")
        self.cause = cause

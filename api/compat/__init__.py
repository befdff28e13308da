"""Compatibility adapters: AUTOMATIC1111's ``/sdapi/v1`` and Replicate's predictions API, translated to and from the
v1 job contract. No second execution path: every request becomes jobs submitted as the native routes submit them
(``api.submit.submit_job``: tenant, rate limit, validation, limits, idempotency, metrics)."""

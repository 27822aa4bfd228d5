"""S3 clients and S3 errors: which are worth retrying, and how they read on one line."""

from __future__ import annotations

from models.core.errors import one_line
from models.core.settings import settings


def s3_client(timeout: float = 60.0, attempts: int = 1):
    """A boto3 S3 client configured from the environment (AWS_* and GDL_S3_ENDPOINT_URL)."""
    import boto3
    from botocore.config import Config

    endpoint = settings().s3_endpoint_url
    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": attempts, "mode": "standard"},
        s3={"addressing_style": "path"},
    )
    return boto3.client("s3", endpoint_url=endpoint or None, config=config)


# 4xx answers that waiting cannot change into a success, whatever their code.
_S3_TRANSIENT_CODES = {
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
}


def s3_error_transient(exc: BaseException) -> bool:
    """Whether an S3 failure may pass on a later try: connection trouble, 5xx, throttling; not a
    missing bucket or key, denied access or bad credentials (retrying those only wastes time)."""
    from botocore.exceptions import ClientError, NoCredentialsError, ParamValidationError

    if isinstance(exc, NoCredentialsError | ParamValidationError):
        return False
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in _S3_TRANSIENT_CODES or status >= 500 or status in (408, 429) or not status
    return True


def s3_error_text(exc: BaseException) -> str:
    """One line naming an S3 failure without credentials (botocore's messages may span lines,
    and some name the endpoint or object URL: each is redacted)."""
    from botocore.exceptions import ClientError

    from models.inputs.catalog import redact_text

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return one_line(redact_text(f"{error.get('Code', '')} {error.get('Message', '')}".strip() or exc))
    return f"{type(exc).__name__}: {one_line(redact_text(exc))}"

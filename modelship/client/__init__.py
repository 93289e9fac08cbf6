"""A typed Python client for the ModelShip HTTP API, blocking (``Client``) and asyncio
(``AsyncClient``), for notebooks and scripts.

It imports only ``modelship.core`` (the records and errors the server shares), httpx,
and pandas when ``to_dataframe`` is called, so it installs without the server::

    from modelship.client import Client, to_dataframe

    with Client("http://127.0.0.1:8000", api_key="ms_...") as ms:
        project = ms.create_project("photos", "image-classification", "efficientnet-lite0")
        ms.upload_folder(project, "photos/", "*.jpg", bar=True)
        job = ms.wait_job(ms.create_job(project), bar=True)
        frame = to_dataframe(ms.job_results(job))
"""

from modelship.client._async import AsyncClient
from modelship.client._protocol import NO_RETRIES, RetryPolicy
from modelship.client._sync import Client
from modelship.client._uploads import UploadResult
from modelship.client.errors import (
    ApiError,
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
    ModelNotReady,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from modelship.client.frames import to_dataframe
from modelship.client.progress import ProgressCallback

__all__ = [
    "NO_RETRIES",
    "ApiError",
    "AsyncClient",
    "Client",
    "Conflict",
    "Forbidden",
    "Gone",
    "InvalidInput",
    "ModelNotReady",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "ProgressCallback",
    "QuotaExceeded",
    "RateLimited",
    "RetryPolicy",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
    "UploadResult",
    "to_dataframe",
]

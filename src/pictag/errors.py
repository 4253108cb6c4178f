"""The one exception type users see: the CLI prints its message on one line and exits 2."""


class PictagError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""


class AlreadyComplete(Exception):
    """A resumed output is already complete, made with the same options: nothing to do (the CLI exits 0)."""


# The clients fsspec uses for object storage (s3fs: botocore; gcsfs: google-auth; adlfs: azure) raise their own
# errors for what is wrong in the environment (no credentials, an unreachable endpoint) rather than an OSError.
_STORAGE_CLIENTS = ("botocore", "aiobotocore", "google", "azure")


def storage_error(exc: BaseException) -> str | None:
    """One line for an object-storage client's own error (the user's credentials or endpoint, not a bug); else None."""
    if type(exc).__module__.split(".")[0] not in _STORAGE_CLIENTS:
        return None
    return f"object storage: {' '.join(str(exc).split()) or type(exc).__name__} (check the credentials and endpoint)"

"""Tracking URIs as text, before any MLflow: which ones the pipeline can use, and how a URI is shown.

A password never reaches a message, a param or a log: a URI is shown :func:`redact`-ed, and one that
carries credentials is refused (:func:`uri_problem`): they come from the environment. Pure string
functions, below both the configuration (which checks ``tracking.uri`` when it is read) and the
tracker."""

from __future__ import annotations

import urllib.parse

# a store the pipeline can use; a bare word or a path is refused (MLflow would make a directory of it)
URI_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks")


def redact(uri: str) -> str:
    """``uri`` with the password of its user part, if any, shown as ``***`` (for messages)."""
    try:
        parts = urllib.parse.urlsplit(uri)
        password = parts.password
    except ValueError:  # e.g. a port that is not a number
        return uri.split("@", 1)[-1] if "@" in uri else uri
    if password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _credentials_fix(scheme: str) -> str:
    if scheme in ("http", "https"):
        return ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment instead (MLflow "
                "reads them there), so that the password stays out of command lines, logs and MLflow")
    return ("give the database password in PGPASSWORD or ~/.pgpass (libpq reads them) instead, so that it "
            "stays out of command lines, logs and MLflow")


def uri_problem(uri: str) -> tuple[str, str] | None:
    """What is wrong with a tracking URI and the fix, or None: one MLflow could not use or would
    misread as a directory, or one that carries a password (or, for a server, any user name):
    credentials come from the environment."""
    try:
        parts = urllib.parse.urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        parts = None
    scheme = parts.scheme.split("+")[0] if parts else ""
    if scheme not in URI_SCHEMES or any(c.isspace() for c in uri):
        return ("is not a tracking URI", "pass --tracking-uri http://HOST:PORT (an MLflow server) or "
                                          "sqlite:///PATH.db (a local file), or --no-mlflow")
    if parts.password is not None or (scheme in ("http", "https") and parts.username is not None):
        return "carries credentials", f"remove them from it and {_credentials_fix(scheme)}"
    if scheme in ("http", "https") and not parts.hostname:
        return "names no host", "pass --tracking-uri http://HOST:PORT"
    return None

"""Create (or bring up to date) the MLflow account a sweep logs as, on a server running MLflow's
basic-auth app; idempotent, so a deployment runs it at every start. Standard library only.

    MLFLOW_TRACKING_URI=http://mlflow:5000 MLFLOW_AUTH_ADMIN_PASSWORD_FILE=... \\
    ACCOUNT_USERNAME=sweeper ACCOUNT_PASSWORD_FILE=... [ACCOUNT_ADMIN=true] python create_account.py

The admin's name is ``MLFLOW_AUTH_ADMIN_USERNAME`` (default ``admin``). A ``NAME_FILE`` variable
names a file holding NAME's value. ``ACCOUNT_ADMIN=true`` makes the account an admin, which the
server does not check permissions for on each request (README.md beside this file weighs it).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def setting(name: str, default: str | None = None) -> str:
    path = os.environ.get(f"{name}_FILE")
    value = open(path).read().strip() if path else os.environ.get(name, default)
    if not value:
        sys.exit(f"create_account: {name} is not set; give it (or {name}_FILE)")
    return value


def call(uri: str, method: str, path: str, auth: tuple[str, str], body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", data=data, method=method,
                                 headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def main() -> None:
    uri = setting("MLFLOW_TRACKING_URI").rstrip("/")
    admin = (setting("MLFLOW_AUTH_ADMIN_USERNAME", "admin"), setting("MLFLOW_AUTH_ADMIN_PASSWORD"))
    user, password = setting("ACCOUNT_USERNAME"), setting("ACCOUNT_PASSWORD")
    make_admin = os.environ.get("ACCOUNT_ADMIN", "false").lower() == "true"
    deadline = time.monotonic() + float(os.environ.get("WAIT_S", "300"))
    while True:  # the server may still be starting
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"create_account: no MLflow server answers at {uri}")
            time.sleep(2)
    code, _ = call(uri, "GET", f"users/get?username={urllib.parse.quote(user)}", admin)
    if code == 401:
        sys.exit("create_account: the server refused the admin's login; check MLFLOW_AUTH_ADMIN_PASSWORD")
    if code == 200:
        code, _ = call(uri, "PATCH", "users/update-password", admin, dict(username=user, password=password))
        what = "password updated"
    else:
        code, _ = call(uri, "POST", "users/create", admin, dict(username=user, password=password))
        what = "created"
    if code != 200:
        sys.exit(f"create_account: the server answered HTTP {code} for account {user!r}")
    code, _ = call(uri, "PATCH", "users/update-admin", admin, dict(username=user, is_admin=make_admin))
    if code != 200:
        sys.exit(f"create_account: the server answered HTTP {code} setting the admin flag of {user!r}")
    print(f"create_account: account {user!r} {what} ({'admin' if make_admin else 'not admin'}) on {uri}")


if __name__ == "__main__":
    main()

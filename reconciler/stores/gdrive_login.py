"""`reconciler gdrive login`: create an OAuth authorized-user file on a machine without a browser.

Design decision: the installed-app flow with PKCE and a loopback redirect, completed by hand. The user
opens the printed URL on any device, consents, and the browser lands on an unreachable
``http://127.0.0.1:<port>/?code=...`` page; they paste that address (or just the code) back. Google's
device flow would need no pasting, but it only grants the ``drive.file`` scope, which cannot write into
a folder the user created; the out-of-band copy-code flow was retired by Google in 2022.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from reconciler.errors import InvalidInput, PermanentError

SCOPE = "https://www.googleapis.com/auth/drive"
REDIRECT = "http://127.0.0.1:8765/"


@dataclass(frozen=True)
class LoginSession:
    client_id: str
    client_secret: str
    auth_uri: str
    token_uri: str
    verifier: str
    state: str

    def url(self) -> str:
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=").decode()
        )
        query = {
            "client_id": self.client_id,
            "redirect_uri": REDIRECT,
            "response_type": "code",
            "scope": SCOPE,
            "access_type": "offline",
            "prompt": "consent",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": self.state,
        }
        return f"{self.auth_uri}?{urllib.parse.urlencode(query)}"


def start(client_secrets_path: str) -> LoginSession:
    try:
        with open(client_secrets_path, encoding="utf-8") as handle:
            document = json.load(handle)
        client = document.get("installed") or document.get("web")
        return LoginSession(
            client["client_id"],
            client["client_secret"],
            client.get("auth_uri", "https://accounts.google.com/o/oauth2/auth"),
            client.get("token_uri", "https://oauth2.googleapis.com/token"),
            secrets.token_urlsafe(48),
            secrets.token_urlsafe(16),
        )
    except FileNotFoundError:
        raise InvalidInput(
            f"{client_secrets_path} does not exist: create an OAuth client of type 'Desktop app' in the Google "
            "Cloud console and download its JSON"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise InvalidInput(
            f"{client_secrets_path} is not a Google OAuth client file (installed/desktop app)"
        ) from None


def code_from(pasted: str, session: LoginSession) -> str:
    """Accept the whole redirect address (state checked) or the bare code."""
    pasted = pasted.strip()
    if "?" not in pasted and "=" not in pasted:
        return pasted
    query = urllib.parse.parse_qs(urllib.parse.urlparse(pasted).query)
    if "error" in query:
        raise PermanentError(f"Google refused the authorisation: {query['error'][0]}")
    if query.get("state", [""])[0] != session.state:
        raise InvalidInput(
            "the pasted address belongs to another login attempt (state mismatch); start again"
        )
    if "code" not in query:
        raise InvalidInput("the pasted address holds no code; paste the full address your browser ended on")
    return query["code"][0]


def finish(session: LoginSession, code: str, out_path: str) -> None:
    form = urllib.parse.urlencode(
        {
            "code": code,
            "client_id": session.client_id,
            "client_secret": session.client_secret,
            "redirect_uri": REDIRECT,
            "grant_type": "authorization_code",
            "code_verifier": session.verifier,
        }
    ).encode()
    request = urllib.request.Request(session.token_uri, data=form, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            tokens: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:
        raise PermanentError(
            f"the token exchange failed ({exc.code}): the code may have expired; start again"
        ) from None
    except (urllib.error.URLError, TimeoutError) as exc:
        raise PermanentError(f"cannot reach {session.token_uri}: {exc}") from None
    if "refresh_token" not in tokens:
        raise PermanentError(
            "Google returned no refresh token; remove the app's access in your Google account and retry"
        )
    document = {
        "type": "authorized_user",
        "client_id": session.client_id,
        "client_secret": session.client_secret,
        "refresh_token": tokens["refresh_token"],
        "token_uri": session.token_uri,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    try:
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInput(f"{out_path} already exists; remove it first to replace the credentials") from None
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle)
        handle.flush()
        os.fsync(handle.fileno())

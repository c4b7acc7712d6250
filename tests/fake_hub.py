"""A local stand-in for the Hugging Face Hub, good enough for the real ``huggingface_hub`` client.

It answers the endpoints that ``whoami``, ``create_repo``, ``create_branch``, ``upload_folder`` (preupload +
ndjson commit), ``repo_info`` / ``list_repo_tree`` / ``snapshot_download`` and ``hf_hub_download`` (HEAD/GET
``resolve``) call, with the status codes, ``X-Error-Code`` headers and bodies the client interprets:

* every file is a regular git blob (preupload answers ``uploadMode: "regular"``), so uploads never take the
  LFS/Xet path and everything travels base64-encoded inside the commit;
* tokens map to users; a missing/unknown token gets 401 "Invalid credentials in Authorization header", a read
  token or a namespace the user does not own gets 403, repos of other owners can be seeded with
  :meth:`FakeHub.add_repo`;
* private repos are invisible (401 RepoNotFound) to everyone but their owner, like on the real Hub.

Usage::

    with FakeHub({"hf_alice_token...": "alice"}) as hub:
        hub.url  # point HF_ENDPOINT / huggingface_hub.constants.ENDPOINT here
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    owner: str
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # oid -> {path: content}
    messages: dict[str, str] = field(default_factory=dict)  # oid -> commit summary

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


@dataclass
class Token:
    user: str
    role: str = "write"  # "write" or "read"
    orgs: tuple[str, ...] = ()


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


class FakeHub:
    """A threaded HTTP server on 127.0.0.1 with an in-memory repo store; use as a context manager."""

    def __init__(self, tokens: dict[str, str | Token] | None = None) -> None:
        self.tokens: dict[str, Token] = {
            t: (v if isinstance(v, Token) else Token(v)) for t, v in (tokens or {}).items()
        }
        self.repos: dict[str, Repo] = {}
        # (method, path) of every request, for tests that check what the client did (never headers: tokens).
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeHub is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- repo store ---------------------------------------------------------------------------------------

    def add_repo(
        self, repo_id: str, owner: str, files: dict[str, bytes] | None = None, private: bool = False
    ) -> Repo:
        """Seed a repo (e.g. one of another owner) with an initial commit holding ``files``."""
        with self._lock:
            repo = Repo(repo_id, owner, private)
            self._commit(
                repo, "main", None, {".gitattributes": GITATTRIBUTES, **(files or {})}, "initial commit"
            )
            self.repos[repo_id] = repo
            return repo

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` (a branch or a commit oid)."""
        repo = self.repos[repo_id]
        oid = repo.resolve(revision)
        if oid is None:
            raise KeyError(f"{repo_id} has no revision {revision!r}")
        return dict(repo.commits[oid])

    @staticmethod
    def _commit(
        repo: Repo,
        branch: str,
        parent: str | None,
        files: dict[str, bytes],
        message: str,
        deleted: tuple = (),
    ) -> str:
        tree = dict(repo.commits[parent]) if parent else {}
        tree.update(files)
        for path in deleted:
            tree.pop(path, None)
        oid = hashlib.sha1(f"{repo.repo_id}{time.time_ns()}{secrets.token_hex(8)}".encode()).hexdigest()
        repo.commits[oid] = tree
        repo.messages[oid] = message
        repo.branches[branch] = oid
        return oid

    # -- auth ---------------------------------------------------------------------------------------------

    def _token(self, headers: Any) -> Token | None:
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        return self.tokens.get(auth[len("Bearer ") :].strip())

    def _require_token(self, headers: Any) -> Token:
        token = self._token(headers)
        if token is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return token

    def _can_write(self, token: Token, namespace: str) -> bool:
        return token.role == "write" and (namespace == token.user or namespace in token.orgs)

    def _visible_repo(self, repo_id: str, headers: Any) -> Repo:
        repo = self.repos.get(repo_id)
        token = self._token(headers)
        allowed = repo is not None and (
            not repo.private or (token is not None and (repo.owner == token.user or repo.owner in token.orgs))
        )
        if not allowed:
            # The real Hub answers 401 for missing and for private repos alike, so nothing leaks.
            raise HubError(401 if token is None else 404, "Repository not found", "RepoNotFound")
        assert repo is not None
        return repo

    def _writable_repo(self, repo_id: str, headers: Any) -> Repo:
        token = self._require_token(headers)
        repo = self._visible_repo(repo_id, headers)
        if not self._can_write(token, repo.owner):
            raise HubError(403, f"You don't have write access to {repo_id}. Ask the owner for access.")
        return repo

    @staticmethod
    def _revision(repo: Repo, revision: str) -> str:
        oid = repo.resolve(revision)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return oid

    # -- endpoints ----------------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict, headers: Any, body: bytes
    ) -> tuple[int, dict, bytes]:
        with self._lock:
            self.requests.append((method, path))
        parts = [unquote(p) for p in path.strip("/").split("/")]
        try:
            with self._lock:
                return self._route(method, parts, query, headers, body)
        except HubError as err:
            extra = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                extra["X-Error-Code"] = err.code
            return err.status, extra, json.dumps({"error": err.message}).encode()

    def _route(self, method: str, parts: list[str], query: dict, headers: Any, body: bytes):
        if parts[:2] == ["api", "whoami-v2"] and method == "GET":
            return self._whoami(headers)
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(headers, json.loads(body or b"{}"))
        if parts[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id = f"{parts[2]}/{parts[3]}"
            rest = parts[4:]
            if not rest and method == "GET":
                return self._model_info(repo_id, "main", headers)
            if rest[:1] == ["revision"] and len(rest) == 2 and method == "GET":
                return self._model_info(repo_id, rest[1], headers)
            if rest[:1] == ["tree"] and len(rest) >= 2 and method == "GET":
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), headers)
            if rest == ["refs"] and method == "GET":
                return self._refs(repo_id, headers)
            if rest[:1] == ["branch"] and len(rest) == 2 and method == "POST":
                return self._create_branch(repo_id, rest[1], headers, json.loads(body or b"{}"))
            if rest[:1] == ["preupload"] and len(rest) == 2 and method == "POST":
                return self._preupload(repo_id, rest[1], headers, json.loads(body or b"{}"))
            if rest[:1] == ["commit"] and len(rest) == 2 and method == "POST":
                return self._commit_endpoint(repo_id, rest[1], headers, body)
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), headers, method)
        raise HubError(404, f"fake hub: no route for {method} /{'/'.join(parts)}")

    def _whoami(self, headers: Any):
        token = self._require_token(headers)
        body = {
            "type": "user",
            "name": token.user,
            "fullname": token.user.title(),
            "orgs": [{"name": org, "type": "org"} for org in token.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": token.role}},
        }
        return _json(200, body)

    def _create_repo(self, headers: Any, payload: dict):
        token = self._require_token(headers)
        name = payload.get("name")
        if not isinstance(name, str) or not name:
            raise HubError(400, "name is required")
        namespace = payload.get("organization") or token.user
        repo_id = f"{namespace}/{name}"
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, "fake hub: only model repos")
        if not self._can_write(token, namespace):
            raise HubError(
                403, f'You don\'t have the rights to create a model under the namespace "{namespace}"'
            )
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            return _json(409, {"error": "You already created this model repo", "url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))  # new / old clients
        repo = Repo(repo_id, namespace, private)
        self._commit(repo, "main", None, {".gitattributes": GITATTRIBUTES}, "initial commit")
        self.repos[repo_id] = repo
        return _json(200, {"url": url, "name": repo_id, "id": secrets.token_hex(12)})

    def _validate_yaml(self, payload: dict):
        content = payload.get("content", "")
        errors: list[dict] = []
        if content.startswith("---"):
            end = content.find("\n---", 3)
            if end < 0:
                errors.append({"message": "unterminated YAML front matter"})
            else:
                try:
                    meta = yaml.safe_load(content[3:end])
                except yaml.YAMLError as exc:
                    errors.append({"message": f"invalid YAML: {exc}"})
                else:
                    errors.extend(_metadata_errors(meta))
        if errors:
            return _json(400, {"errors": errors, "warnings": []})
        return _json(200, {"errors": [], "warnings": []})

    def _model_info(self, repo_id: str, revision: str, headers: Any):
        repo = self._visible_repo(repo_id, headers)
        oid = self._revision(repo, revision)
        files = repo.commits[oid]
        body = {
            "_id": repo_id,
            "id": repo_id,
            "modelId": repo_id,
            "author": repo.owner,
            "sha": oid,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": path} for path in sorted(files)],
        }
        return _json(200, body)

    def _tree(self, repo_id: str, revision: str, prefix: str, headers: Any):
        repo = self._visible_repo(repo_id, headers)
        files = repo.commits[self._revision(repo, revision)]
        prefix = prefix.strip("/")
        entries = [
            {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}
            for path, data in sorted(files.items())
            if not prefix or path.startswith(prefix + "/")
        ]
        return _json(200, entries)

    def _refs(self, repo_id: str, headers: Any):
        repo = self._visible_repo(repo_id, headers)
        branches = [
            {"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
            for b, oid in sorted(repo.branches.items())
        ]
        return _json(200, {"branches": branches, "tags": [], "converts": []})

    def _create_branch(self, repo_id: str, branch: str, headers: Any, payload: dict):
        repo = self._writable_repo(repo_id, headers)
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._revision(repo, payload.get("startingPoint") or "main")
        repo.branches[branch] = start
        return _json(200, {})

    def _preupload(self, repo_id: str, revision: str, headers: Any, payload: dict):
        repo = self._writable_repo(repo_id, headers)
        files = repo.commits[self._revision(repo, revision)]
        answer = []
        for item in payload.get("files", []):
            existing = files.get(item["path"])
            answer.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",  # never "lfs": keeps the client off the LFS/Xet upload path
                    "shouldIgnore": False,
                    "oid": git_blob_oid(existing) if existing is not None else None,
                }
            )
        return _json(200, {"files": answer, "commitOid": repo.branches.get(revision)})

    def _commit_endpoint(self, repo_id: str, revision: str, headers: Any, body: bytes):
        repo = self._writable_repo(repo_id, headers)
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        summary = ""
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "fake hub: file content must be base64")
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                raise HubError(400, f"fake hub: unsupported commit operation {key!r}")
        if not summary:
            raise HubError(400, "commit summary is required")
        parent = repo.branches[revision]
        oid = self._commit(repo, revision, parent, added, summary, tuple(deleted))
        body_out = {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self.url}/{repo_id}/commit/{oid}",
            "pullRequestUrl": None,
        }
        return _json(200, body_out)

    def _resolve(self, repo_id: str, revision: str, path: str, headers: Any, method: str):
        repo = self._visible_repo(repo_id, headers)
        oid = self._revision(repo, revision)
        data = repo.commits[oid].get(path)
        if data is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": oid})
        out_headers = {
            "X-Repo-Commit": oid,
            "ETag": f'"{git_blob_oid(data)}"',
            "Content-Type": "application/octet-stream",
        }
        return 200, out_headers, (b"" if method == "HEAD" else data), len(data)


def _metadata_errors(meta: Any) -> list[dict]:
    """The few model-card metadata checks that matter here (the real Hub checks many more)."""
    if meta is None:
        return []
    if not isinstance(meta, dict):
        return [{"message": "metadata must be a YAML mapping"}]
    errors = []
    for key in ("tags", "datasets"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            errors.append({"message": f'"{key}" must be a list of strings'})
    for key in ("license", "library_name", "pipeline_tag"):
        if key in meta and not isinstance(meta[key], str):
            errors.append({"message": f'"{key}" must be a string'})
    for entry in meta.get("model-index") or []:
        if not isinstance(entry, dict) or "name" not in entry or not isinstance(entry.get("results"), list):
            errors.append({"message": '"model-index" entries need a name and a list of results'})
    return errors


def _json(status: int, body: Any) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence: logs would be test noise
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        body = self._body() if method in ("POST", "PUT") else b""
        result = self.fake.handle(method, split.path, parse_qs(split.query), self.headers, body)
        status, headers, payload = result[:3]
        length = result[3] if len(result) > 3 else len(payload)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if payload and method != "HEAD":  # a HEAD body would be read as the next response on this connection
            self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._serve("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")


def use_fake_hub(monkeypatch: pytest.MonkeyPatch, hub: FakeHub, home: Path) -> None:
    """Point huggingface_hub at ``hub`` with no token and a private cache under ``home``.

    huggingface_hub reads HF_ENDPOINT & co. into ``constants`` when it is imported, which has happened by
    now, so the constants are patched; the environment variables are set too, for subprocesses.
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hf-cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "hf-home" / "stored_tokens"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(home / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")

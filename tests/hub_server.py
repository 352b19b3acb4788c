"""A small in-memory stand-in for the Hugging Face Hub HTTP API, for offline round-trip tests.

It speaks the subset of the Hub protocol that `huggingface_hub` (2.x) and `transformers` use to
create repos, upload (regular files inline, large/binary files over the Git LFS "basic" transfer),
create branches, read repo info and trees, and download files through `resolve` URLs. Repos hold
real commits (content-addressed, one per upload) so branches and unchanged re-uploads behave as on
the Hub. Standard library plus PyYAML (to check card metadata); run it with `start_hub_server()`.

What it deliberately leaves out: Xet storage (clients must set HF_HUB_DISABLE_XET), pull requests,
organizations, tags, datasets/spaces beyond storing them, the CDN redirect of LFS downloads (they
are served directly, with the X-Linked-* headers) and any web UI.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# Files the Hub stores in LFS by default (its initial .gitattributes), plus anything >= 10 MB.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".png", ".jpg", ".npy")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
INVALID_TOKEN = "Invalid credentials in Authorization header"


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob, as the Hub reports for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        """The git-lfs pointer file that stands in the git tree for an LFS blob."""
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
            f"size {len(self.data)}\n"
        ).encode()

    @property
    def oid(self) -> str:
        return git_blob_oid(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, Blob]
    date: str


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    owner: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch name or a full commit id -> its commit."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        return self.commits.get(revision)


class HubError(Exception):
    """An HTTP error answered the way the Hub does: status, X-Error-Code and a JSON message."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class HubState:
    """Everything the stand-in Hub knows. `tokens` maps a bearer token to the user it logs in."""

    tokens: dict[str, str]
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    unrouted: list[tuple[str, str]] = field(default_factory=list)  # calls it does not speak
    lock: threading.RLock = field(default_factory=threading.RLock)
    _counter: int = 0

    def new_commit(self, repo: Repo, parent: str | None, message: str, files: dict) -> Commit:
        self._counter += 1
        digest = hashlib.sha1(f"{repo.repo_id}\0{parent}\0{message}\0{self._counter}".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{files[path].oid}\0".encode())
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        commit = Commit(digest.hexdigest(), parent, message, dict(files), date)
        repo.commits[commit.oid] = commit
        return commit


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubHTTPServer

    # -- plumbing ------------------------------------------------------------------------------
    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr access log
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _body(self) -> bytes:
        return self.body

    def _json_body(self) -> dict:
        body = self._body()
        return json.loads(body) if body else {}

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _send_error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json(err.status, {"error": err.message}, headers)

    @property
    def endpoint(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def _user(self) -> str | None:
        """The logged-in user, None when anonymous; an unknown token is a 401 as on the Hub."""
        auth = self.headers.get("Authorization", "")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        user = self.server.state.tokens.get(token)
        if user is None:
            raise HubError(401, INVALID_TOKEN)
        return user

    def _repo(self, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        user = self._user()
        repo = self.server.state.repos.get((repo_type, repo_id))
        visible = repo is not None and (not repo.private or user == repo.owner)
        if not visible:
            status = 404 if user else 401
            raise HubError(status, "Repository not found", "RepoNotFound")
        if write and user != repo.owner:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    @staticmethod
    def _commit(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _dispatch(self) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        raw_path, query = url.path, parse_qs(url.query)
        self.body = self._read_body()  # always drain it, so a kept-alive connection stays in sync
        with state.lock:
            state.requests.append((self.command, unquote(raw_path)))
        for method, pattern, handler in ROUTES:
            match = pattern.fullmatch(raw_path)
            if method == self.command and match:
                args = {
                    k: unquote(v) if v is not None else None for k, v in match.groupdict().items()
                }
                try:
                    with state.lock:
                        handler(self, query=query, **args)
                except HubError as err:
                    self._send_error(err)
                return
        with state.lock:
            state.unrouted.append((self.command, raw_path))
        self._send_error(HubError(404, f"stand-in Hub: no route for {self.command} {raw_path}"))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- account and repos -----------------------------------------------------------------------
    def whoami(self, query) -> None:
        user = self._user()
        if user is None:
            raise HubError(401, INVALID_TOKEN)
        role = {"role": "write", "displayName": "stand-in token"}
        self._send_json(
            200, {"type": "user", "name": user, "orgs": [], "auth": {"accessToken": role}}
        )

    def agent_harnesses(self, query) -> None:
        """The registry huggingface_hub reads to label its user agent; empty here."""
        self._send_json(200, {"standardEnvVars": [], "harnesses": {}})

    def create_repo(self, query) -> None:
        user = self._user()
        payload = self._json_body()
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        namespace = payload.get("organization") or user
        if namespace != user:
            raise HubError(403, f"You don't have the rights to create a repo under {namespace}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        repo_url = f"{self.endpoint}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.server.state.repos:
            message = f"You already created this {repo_type} repo"
            self._send_json(409, {"error": message, "url": repo_url}, {"X-Error-Message": message})
            return
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(repo_id, repo_type, user, private)
        first = {".gitattributes": Blob(GITATTRIBUTES.encode(), lfs=False)}
        repo.branches["main"] = self.server.state.new_commit(
            repo, None, "initial commit", first
        ).oid
        self.server.state.repos[(repo_type, repo_id)] = repo
        self._send_json(200, {"url": repo_url, "name": repo_id})

    def validate_yaml(self, query) -> None:
        """Checks the README front matter the way the Hub's metadata validator does, loosely."""
        content = self._json_body().get("content", "")
        errors = []
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
        meta = {}
        if match:
            try:
                meta = yaml.safe_load(match.group(1)) or {}
            except yaml.YAMLError as err:
                errors.append(f"YAML does not parse: {err}")
            if not errors and not isinstance(meta, dict):
                errors.append("metadata must be a YAML mapping")
                meta = {}
        for key in ("library_name", "license", "pipeline_tag"):
            if key in meta and not isinstance(meta[key], str):
                errors.append(f'"{key}" must be a string')
        for key in ("tags", "datasets", "base_model", "language"):
            value = meta.get(key)
            ok = value is None or isinstance(value, str)
            ok = ok or (isinstance(value, list) and all(isinstance(v, str) for v in value))
            if not ok:
                errors.append(f'"{key}" must be a string or a list of strings')
        if errors:
            messages = [{"message": e} for e in errors]
            self._send_json(400, {"errors": messages}, {"X-Error-Message": "; ".join(errors)})
            return
        self._send_json(200, {"errors": [], "warnings": []})

    def repo_info(self, query, kind: str, repo_id: str, revision: str | None = None) -> None:
        repo = self._repo(REPO_TYPES[kind], repo_id)
        commit = self._commit(repo, revision or "main")
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling = {"rfilename": path, "size": len(blob.data), "blobId": blob.oid}
            if blob.lfs:
                sibling["lfs"] = {
                    "size": len(blob.data),
                    "sha256": blob.sha256,
                    "pointerSize": len(blob.pointer),
                }
            siblings.append(sibling)
        info = {
            "id": repo_id,
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "author": repo.owner,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.commits[min(repo.commits, key=lambda o: repo.commits[o].date)].date,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        self._send_json(200, info)

    def list_refs(self, query, kind: str, repo_id: str) -> None:
        repo = self._repo(REPO_TYPES[kind], repo_id)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
            for name, oid in sorted(repo.branches.items())
        ]
        self._send_json(200, {"branches": branches, "converts": [], "tags": []})

    def create_branch(self, query, kind: str, repo_id: str, branch: str) -> None:
        repo = self._repo(REPO_TYPES[kind], repo_id, write=True)
        start = self._json_body().get("startingPoint") or "main"
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo.branches[branch] = self._commit(repo, start).oid
        self._send_json(200, {})

    def list_tree(self, query, kind: str, repo_id: str, revision: str, path: str | None) -> None:
        repo = self._repo(REPO_TYPES[kind], repo_id)
        commit = self._commit(repo, revision)
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        entries, folders = [], set()
        for file_path, blob in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(self._file_entry(file_path, blob))
        for folder in sorted(folders):
            entries.append(
                {
                    "type": "directory",
                    "oid": git_blob_oid(folder.encode()),
                    "size": 0,
                    "path": folder,
                }
            )
        self._send_json(200, entries)

    def paths_info(self, query, kind: str, repo_id: str, revision: str) -> None:
        repo = self._repo(REPO_TYPES[kind], repo_id)
        commit = self._commit(repo, revision)
        body = self._body().decode()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body).get("paths", [])
        entries = [self._file_entry(p, commit.files[p]) for p in paths if p in commit.files]
        self._send_json(200, entries)

    @staticmethod
    def _file_entry(path: str, blob: Blob) -> dict:
        entry = {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": path}
        if blob.lfs:
            entry["lfs"] = {
                "oid": blob.sha256,
                "size": len(blob.data),
                "pointerSize": len(blob.pointer),
            }
        return entry

    # -- uploads -----------------------------------------------------------------------------------
    def preupload(self, query, kind: str, repo_id: str, revision: str) -> None:
        repo = self._repo(REPO_TYPES[kind], repo_id, write=True)
        commit = self._commit(repo, revision)
        answers = []
        for file in self._json_body().get("files", []):
            path, size = file["path"], int(file["size"])
            lfs = path.lower().endswith(LFS_SUFFIXES) or size >= LFS_SIZE_THRESHOLD
            existing = commit.files.get(path)
            # The client compares this oid to its own: sha256 for LFS files, git sha1 otherwise.
            oid = None if existing is None else (existing.sha256 if lfs else existing.oid)
            mode = "lfs" if lfs else "regular"
            answers.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._send_json(200, {"files": answers, "commitOid": commit.oid})

    def commit(self, query, kind: str, repo_id: str, revision: str) -> None:
        state = self.server.state
        repo = self._repo(REPO_TYPES[kind], repo_id, write=True)
        if query.get("create_pr"):
            raise HubError(400, "the stand-in Hub does not support pull requests")
        head = self._commit(repo, revision)
        if revision not in repo.branches:
            raise HubError(400, f"Can only commit to a branch, not to {revision}")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), None)
        if header is None or not header.get("summary"):
            raise HubError(400, "commit header with a non-empty summary is required")
        if header.get("parentCommit") not in (None, head.oid):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                data = state.lfs_objects.get(value["oid"])
                if data is None:
                    raise HubError(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = Blob(data, lfs=True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(prefix)}
            elif key != "header":
                raise HubError(400, f"the stand-in Hub does not support commit operation {key!r}")
        message = header["summary"] + (
            "\n\n" + header["description"] if header.get("description") else ""
        )
        new = state.new_commit(repo, head.oid, message, files)
        repo.branches[revision] = new.oid
        url = f"{self.endpoint}/{repo_id}/commit/{new.oid}"
        self._send_json(200, {"success": True, "commitOid": new.oid, "commitUrl": url})

    def lfs_batch(self, query, prefix: str | None, repo_id: str) -> None:
        repo_type = REPO_TYPES[prefix.rstrip("/")] if prefix else "model"
        self._repo(repo_type, repo_id, write=True)
        payload = self._json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, "the stand-in Hub only supports LFS uploads")
        objects = []
        for obj in payload.get("objects", []):
            answer = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.server.state.lfs_objects:  # already stored -> no action
                href = f"{self.endpoint}/__lfs__/{obj['oid']}"
                answer["actions"] = {"upload": {"href": href}}
            objects.append(answer)
        self._send_json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_put(self, query, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "uploaded content does not match its sha256")
        self.server.state.lfs_objects[oid] = data
        self._send(200, b"", {"ETag": f'"{oid}"'})

    # -- downloads -----------------------------------------------------------------------------------
    def resolve(self, query, prefix: str | None, repo_id: str, revision: str, path: str) -> None:
        repo_type = REPO_TYPES[prefix.rstrip("/")] if prefix else "model"
        repo = self._repo(repo_type, repo_id)
        commit = self._commit(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{blob.etag}"',
            "Accept-Ranges": "bytes",
        }
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(len(blob.data))
        data = blob.data
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if ranged and self.command == "GET":
            start = int(ranged.group(1))
            end = int(ranged.group(2)) if ranged.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self._send(206, data[start : end + 1], headers)
            return
        self._send(200, data, headers)


_REPO = r"(?P<repo_id>[\w.\-]+/[\w.\-]+)"
_KIND = r"(?P<kind>models|datasets|spaces)"
ROUTES = [
    (m, re.compile(p), h)
    for m, p, h in [
        ("GET", r"/api/whoami-v2", HubHandler.whoami),
        ("GET", r"/api/agent-harnesses", HubHandler.agent_harnesses),
        ("POST", r"/api/repos/create", HubHandler.create_repo),
        ("POST", r"/api/validate-yaml", HubHandler.validate_yaml),
        ("GET", rf"/api/{_KIND}/{_REPO}", HubHandler.repo_info),
        ("GET", rf"/api/{_KIND}/{_REPO}/revision/(?P<revision>[^/]+)", HubHandler.repo_info),
        ("GET", rf"/api/{_KIND}/{_REPO}/refs", HubHandler.list_refs),
        ("POST", rf"/api/{_KIND}/{_REPO}/branch/(?P<branch>[^/]+)", HubHandler.create_branch),
        (
            "GET",
            rf"/api/{_KIND}/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?",
            HubHandler.list_tree,
        ),
        ("POST", rf"/api/{_KIND}/{_REPO}/paths-info/(?P<revision>[^/]+)", HubHandler.paths_info),
        ("POST", rf"/api/{_KIND}/{_REPO}/preupload/(?P<revision>[^/]+)", HubHandler.preupload),
        ("POST", rf"/api/{_KIND}/{_REPO}/commit/(?P<revision>[^/]+)", HubHandler.commit),
        (
            "POST",
            rf"/(?P<prefix>datasets/|spaces/)?{_REPO}\.git/info/lfs/objects/batch",
            HubHandler.lfs_batch,
        ),
        ("PUT", r"/__lfs__/(?P<oid>[0-9a-f]{64})", HubHandler.lfs_put),
        (
            "HEAD",
            rf"/(?P<prefix>datasets/|spaces/)?{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)",
            HubHandler.resolve,
        ),
        (
            "GET",
            rf"/(?P<prefix>datasets/|spaces/)?{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)",
            HubHandler.resolve,
        ),
    ]
]


class HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: HubState):
        super().__init__(address, HubHandler)
        self.state = state

    @property
    def endpoint(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def start_hub_server(tokens: dict[str, str], host: str = "127.0.0.1") -> HubHTTPServer:
    """Start a stand-in Hub on a free port in a daemon thread; stop it with `.shutdown()`."""
    server = HubHTTPServer((host, 0), HubState(tokens=dict(tokens)))
    threading.Thread(target=server.serve_forever, name="stand-in-hub", daemon=True).start()
    return server

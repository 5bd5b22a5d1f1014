"""`git`: clone a repository into the root, or bring an existing clone up to date.

The host's git client does the work, writing under the root; credentials never appear in
logs (the runner redacts them) and a private key lives only in a private temp file.
"""

from __future__ import annotations

import os
import tempfile
import urllib.parse
from pathlib import Path

from kairos.context import Context
from kairos.errors import KairosError
from kairos.run import run
from kairos.stages.model import Git, Step
from kairos.stages.paths import ensure_dir, rooted


def _url_with_credentials(git: Git) -> str:
    if not (git.auth.username or git.auth.password):
        return git.url
    parts = urllib.parse.urlsplit(git.url)
    if parts.scheme not in ("http", "https"):
        raise KairosError(
            f"git: username/password work with http(s) URLs only, not {git.url!r}.",
            hint="use auth.private_key for ssh URLs",
        )
    user = urllib.parse.quote(git.auth.username, safe="")
    password = urllib.parse.quote(git.auth.password, safe="")
    netloc = f"{user}:{password}@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def sync(git: Git, target: Path, env: dict[str, str], secrets: list[str]) -> None:
    url = _url_with_credentials(git)
    if url != git.url:
        secrets.append(url)
    if (target / ".git").exists():
        # An existing clone: fetch and move to the wanted branch, dropping local changes,
        # so a boot stage converges on the remote state every time.
        run(["git", "-C", target, "remote", "set-url", "origin", url], env=env, secrets=secrets)
        ref = git.branch or "HEAD"
        run(["git", "-C", target, "fetch", "--depth=1", "origin", ref], env=env, secrets=secrets)
        run(["git", "-C", target, "reset", "--hard", "FETCH_HEAD"], env=env, secrets=secrets)
        return
    argv: list[str | Path] = ["git", "clone"]
    if git.branch:
        argv += ["--branch", git.branch]
    if git.branch_only:
        argv.append("--single-branch")
    run([*argv, url, target], env=env, secrets=secrets, timeout=1800)


def apply(step: Step, ctx: Context) -> None:
    git = step.git
    if git is None:
        return
    target = rooted(ctx, git.path)
    ensure_dir(ctx, str(Path(git.path).parent))
    env: dict[str, str] = {"GIT_TERMINAL_PROMPT": "0"}
    secrets = [git.auth.password] if git.auth.password else []
    if git.auth.insecure:
        env["GIT_SSL_NO_VERIFY"] = "1"
    with tempfile.TemporaryDirectory(prefix="kairos-git-") as tmp:
        if git.auth.private_key:
            key = Path(tmp) / "key"
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(git.auth.private_key.rstrip("\n") + "\n")
            checking = "no" if git.auth.insecure else "accept-new"
            env["GIT_SSH_COMMAND"] = (
                f"ssh -i {key} -o IdentitiesOnly=yes -o StrictHostKeyChecking={checking}"
            )
            secrets.append(git.auth.private_key)
        sync(git, target, env, secrets)

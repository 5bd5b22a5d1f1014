"""The `cidata` (NoCloud) datasource ISO a VM gets its user-data from, as upstream's tests do."""

from __future__ import annotations

import tempfile
from pathlib import Path

from kairos.errors import KairosError
from kairos.run import require_tools, run


def meta_data(instance_id: str = "kairos-vm", hostname: str | None = None) -> str:
    lines = [f"instance-id: {instance_id}"]
    if hostname:
        lines.append(f"local-hostname: {hostname}")
    return "\n".join(lines) + "\n"


def write_cidata(user_data: Path, out: Path, *, hostname: str | None = None) -> Path:
    """Write an ISO9660 volume labelled `cidata` holding `user-data` and `meta-data`."""
    try:
        text = user_data.read_text()
    except OSError as exc:
        raise KairosError(
            f"{user_data}: cannot read the cloud-config: {exc.strerror}.",
            hint="pass a readable file to --cloud-config",
        ) from exc
    require_tools(["xorriso"], {"xorriso": "xorriso"})
    with tempfile.TemporaryDirectory(prefix="cidata-", dir=out.parent) as tmp:
        src = Path(tmp)
        (src / "user-data").write_text(text)
        (src / "meta-data").write_text(meta_data(hostname=hostname))
        run(
            [
                "xorriso",
                "-as",
                "mkisofs",
                "-quiet",
                "-output",
                out,
                "-volid",
                "cidata",
                "-joliet",
                "-rock",
                src / "user-data",
                src / "meta-data",
            ]
        )
    return out

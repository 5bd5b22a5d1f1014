"""`kairos build`: registration only; the pipeline is imported when the command runs."""

from __future__ import annotations

import argparse
from typing import Any

EXAMPLES = """examples:
  kairos build --source debian:bookworm --output out/
  kairos build --source debian:bookworm --output out/ --format iso,raw,qcow2,netboot
  kairos build --source ocifile:image.tar --output out/ --cloud-config my.yaml --name edge
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `build` to the top-level parser."""
    p = sub.add_parser(
        "build",
        help="build bootable Kairos media (ISO, raw, qcow2, netboot, OCI) from a distribution",
        description="Turn a distribution into Kairos media: bootstrap or unpack the source, "
        "kairosify it, and write the requested artifacts plus DIR/manifest.json.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--source",
        default="debian:bookworm",
        help="debian:SUITE, dir:PATH, ocifile:FILE or oci-dir:DIR (default: debian:bookworm)",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="where the artifacts go")
    p.add_argument(
        "--format",
        default="iso",
        help="comma-separated: iso,raw,qcow2,netboot,oci (default: iso)",
    )
    p.add_argument("--cloud-config", metavar="FILE", help="embed FILE in the ISO as /config.yaml")
    p.add_argument("--name", default="kairos", help="artifact base name (default: kairos)")
    p.add_argument("--version", default="v0.1.0", help="image version for /etc/kairos-release")
    p.add_argument(
        "--compression",
        default="fast",
        choices=("fast", "release", "gzip"),
        help="squashfs compression, all readable by GRUB: fast = gzip 1 (default), "
        "release = xz, gzip = gzip 9",
    )
    p.add_argument(
        "--extra-cmdline", default="", metavar="ARGS", help="append ARGS to every boot entry"
    )
    p.add_argument(
        "--netboot-url",
        default="http://10.0.2.2:8000",
        metavar="URL",
        help="where the netboot files will be served (used in the iPXE script)",
    )
    p.add_argument("--keep-work", action="store_true", help="keep the assembled root (debugging)")
    p.set_defaults(handler=_build)


def _build(args: argparse.Namespace, ctx: Any) -> int:
    from pathlib import Path

    from kairos.build.pipeline import BuildRequest, build, parse_formats
    from kairos.build.squashfs import Compression
    from kairos.log import Progress

    request = BuildRequest(
        source=args.source,
        output=Path(args.output),
        formats=parse_formats(args.format),
        cloud_config=Path(args.cloud_config) if args.cloud_config else None,
        name=args.name,
        version=args.version,
        compression=Compression(args.compression),
        extra_cmdline=args.extra_cmdline,
        netboot_url=args.netboot_url,
        keep_work=args.keep_work,
    )
    manifest = build(request, Progress(), strict=bool(getattr(ctx, "strict", False)))
    total = sum(s.seconds for s in manifest.steps)
    for art in manifest.artifacts:
        print(f"{request.output / art.file}  {art.size / 1e6:.1f} MB  {art.kind}")
    print(f"built {len(manifest.artifacts)} artifact(s) in {total:.1f}s")
    return 0

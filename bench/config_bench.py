"""Config engine figures beside their physical limits.

1. collect+merge of 200 realistic (~1 KB) config files, warm, best of N, against just
   reading the same bytes;
2. `kairos-agent --version` start-up (the installed entry point) against `python -c pass`.

Run: .venv/bin/python bench/config_bench.py [--files 200] [--repeat 7]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from kairos.config.collect import collect  # noqa: E402
from kairos.context import Context  # noqa: E402

TARGET_COLLECT_S = 0.3
TARGET_VERSION_S = 0.15

TEMPLATE = """#cloud-config
# Node {i}: generated for the config benchmark; shaped like the upstream examples.
name: "bench-{i}"
hostname: node-{i}-{{{{ trunc 4 .MachineID }}}}
install:
  auto: true
  device: /dev/vd{disk}
  reboot: true
  partitions:
    persistent:
      size: {size}
      fs: ext4
users:
  - name: user{i}
    passwd: kairos{i}
    groups: [admin, wheel]
    ssh_authorized_keys:
      - github:user{i}
stages:
  boot:
    - name: "Write motd {i}"
      files:
        - path: /etc/motd.d/{i}
          content: |
            Welcome to node {i}.
            Managed by Kairos; configuration file number {i} of the benchmark.
          permissions: 0644
      commands:
        - echo "node {i} booted" > /run/bench-{i}
        - systemctl restart systemd-timesyncd || true
  network:
    - name: "Network {i}"
      dns:
        nameservers: [10.0.{n}.1, 10.0.{n}.2]
      environment:
        NODE_INDEX: "{i}"
k3s:
  enabled: true
  args:
    - --node-label=index={i}
    - --disable=traefik
"""


def make_root(root: Path, count: int) -> int:
    """Write `count` configs spread over the four config dirs; returns the bytes written."""
    dirs = ["run/initramfs/live", "etc/kairos", "usr/local/cloud-config", "oem"]
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    total = 0
    for i in range(count):
        d = root / dirs[i % len(dirs)]
        d.mkdir(parents=True, exist_ok=True)
        text = TEMPLATE.format(i=i, disk="abcd"[i % 4], size=1000 + i, n=i % 250)
        (d / f"{i:03d}-node.yaml").write_text(text)
        total += len(text.encode())
    return total


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    fn()  # warm: page cache and imports
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def read_all(root: Path) -> int:
    total = 0
    for path in sorted(root.rglob("*.yaml")):
        total += len(path.read_bytes())
    return total


def start_up(argv: list[str], repeat: int) -> float:
    def once() -> None:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)

    return best_of(repeat, once)


def line(name: str, value: float, limit_name: str, limit: float, target: float | None) -> None:
    ratio = value / limit if limit else float("inf")
    verdict = ""
    if target is not None:
        verdict = f"  target < {target:.2f} s: {'OK' if value < target else 'MISSED'}"
    print(
        f"{name:<34} {value * 1000:8.1f} ms   {limit_name} {limit * 1000:7.1f} ms"
        f"   ratio {ratio:5.1f}x{verdict}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kairos-config-bench-") as tmp:
        root = Path(tmp)
        size = make_root(root, args.files)
        ctx = Context(root=root)
        result = collect(ctx, cmdline="")
        assert len(result.documents) == args.files, result.skipped
        assert len(result.merged["users"]) == args.files
        print(f"{args.files} files, {size / 1024:.0f} KiB ({size / args.files:.0f} B each)")
        t_collect = best_of(args.repeat, lambda: collect(ctx, cmdline=""))
        t_read = best_of(args.repeat, lambda: read_all(root))
        line("collect+merge (warm, best)", t_collect, "read bytes", t_read, TARGET_COLLECT_S)

        agent = Path(sys.executable).parent / "kairos-agent"
        if not agent.exists():
            print(f"{agent} missing: install the package (pip install -e .)", file=sys.stderr)
            return 1
        # For information: the whole command, start-up and YAML printing included.
        t_command = start_up([str(agent), "--root", tmp, "config"], args.repeat)
        t_python = start_up([sys.executable, "-c", "pass"], args.repeat)
        line("kairos-agent config (process)", t_command, "python -c pass", t_python, None)

    t_version = start_up([str(agent), "--version"], args.repeat)
    t_python = start_up([sys.executable, "-c", "pass"], args.repeat)
    line("kairos-agent --version (best)", t_version, "python -c pass", t_python, TARGET_VERSION_S)
    ok = t_collect < TARGET_COLLECT_S and t_version < TARGET_VERSION_S
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

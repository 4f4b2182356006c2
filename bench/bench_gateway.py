"""Throughput and memory of the gateway against a minimal baseline server.

Both servers run as real processes on loopback in the same run, on the same
disk, driven by the same client; results are ratios (filestore / baseline),
so they mean the same on any machine.

    .venv/bin/python bench/bench_gateway.py                # 64 MiB x 5, 1 GiB RSS
    .venv/bin/python bench/bench_gateway.py --size 64 --repeat 5 --big 1024

Upload goal ≥ 0.8x, download goal ≥ 0.6x; server peak RSS < 150 MiB while
moving a 1 GiB file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

MIB = 1 << 20
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


class Server:
    """A server process started on a free port and stopped by its PID."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.key = ""
        seen: list[str] = []
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                raise RuntimeError("server exited during start:\n" + "".join(seen))
            seen.append(line)
            if line.startswith("API key: "):
                self.key = line.split(": ", 1)[1].strip()
            if "listening" in line:
                return
        raise RuntimeError("server did not start in 30 s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


async def body(total: int, block: bytes) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = block[: min(len(block), total - sent)]
        sent += len(piece)
        yield piece


async def transfer(base: str, key: str, size: int, block: bytes) -> tuple[float, float]:
    """Upload then download ``size`` bytes; returns (upload s, download s)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.perf_counter()
        async with session.post(
            f"{base}/v1/files",
            data=body(size, block),
            headers={**headers, "Content-Length": str(size)},
        ) as resp:
            assert resp.status == 201, await resp.text()
            file_id = (await resp.json())["id"]
        up = time.perf_counter() - start
        start = time.perf_counter()
        got = 0
        async with session.get(f"{base}/v1/files/{file_id}", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            async for chunk in resp.content.iter_chunked(MIB):
                got += len(chunk)
        down = time.perf_counter() - start
        assert got == size, (got, size)
    return up, down


def start_filestore(tmp: Path) -> tuple[Server, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}
    env.update(
        FILESTORE_PORT=str(port),
        FILESTORE_LOG_LEVEL="WARNING",
        FILESTORE_DATA_DIR=str(tmp / f"filestore-{port}"),
    )
    server = Server([sys.executable, "-m", "filestore", "serve"], env, tmp)
    return server, f"http://127.0.0.1:{port}"


def start_baseline(tmp: Path) -> tuple[Server, str]:
    port = free_port()
    server = Server(
        [sys.executable, str(HERE / "baseline_server.py"), str(port), str(tmp / "baseline")],
        dict(os.environ),
        tmp,
    )
    return server, f"http://127.0.0.1:{port}"


async def measure(
    targets: dict[str, tuple[str, str]], size: int, repeat: int, block: bytes
) -> dict[str, tuple[float, float]]:
    """Median MiB/s per target; transfers alternate between the targets so
    that drift in the machine's speed hits each alike."""
    rates: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in targets}
    for base, key in targets.values():
        await transfer(base, key, 4 * MIB, block)  # warm up
    for _ in range(repeat):
        for name, (base, key) in targets.items():
            up, down = await transfer(base, key, size, block)
            rates[name][0].append(size / up / MIB)
            rates[name][1].append(size / down / MIB)
    return {n: (statistics.median(u), statistics.median(d)) for n, (u, d) in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=64, help="MiB per throughput transfer")
    parser.add_argument("--repeat", type=int, default=5, help="transfers per server (median)")
    parser.add_argument("--big", type=int, default=1024, help="MiB for the RSS run (0: skip)")
    args = parser.parse_args()
    block = os.urandom(MIB)
    size = args.size * MIB
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp_name:
        tmp = Path(tmp_name)
        servers = {"baseline": start_baseline(tmp), "filestore": start_filestore(tmp)}
        try:
            targets = {name: (base, server.key) for name, (server, base) in servers.items()}
            results = asyncio.run(measure(targets, size, args.repeat, block))
        finally:
            for server, _base in servers.values():
                server.stop()
        print(f"throughput, {args.size} MiB, median of {args.repeat} (MiB/s):")
        for name, (up, down) in results.items():
            print(f"  {name:<10} upload {up:8.1f}   download {down:8.1f}")
        b_up, b_down = results["baseline"]
        f_up, f_down = results["filestore"]
        print(
            f"  ratio      upload {f_up / b_up:8.2f}x  download {f_down / b_down:8.2f}x"
            "   (goal >= 0.80x / >= 0.60x)"
        )
        if args.big:
            server, base = start_filestore(tmp)
            try:
                idle = rss_mib(server.proc.pid)
                asyncio.run(transfer(base, server.key, args.big * MIB, block))
                peak = peak_rss_mib(server.proc.pid)
            finally:
                server.stop()
            print(
                f"memory: {args.big} MiB upload+download, server RSS at idle {idle:.1f} MiB, "
                f"peak {peak:.1f} MiB (goal < 150 MiB)"
            )


if __name__ == "__main__":
    main()

"""A large file through the gateway with the S3 backend, against boto3 itself.

Starts SeaweedFS (``tests/support/seaweed.py``) and ``filestore serve`` with
``FILESTORE_STORAGE=s3`` as real processes on loopback, then in the same run
moves the same file

* through the gateway: upload (encrypt + multipart upload) and download
  (ranged GET + decrypt), streamed by an aiohttp client from and to disk;
* with boto3's own ``upload_file``/``download_file`` (its transfer manager:
  8 MiB parts, 10 threads) straight to the same server and bucket;

and reports throughput, the ratios filestore / boto3, and the gateway's
peak RSS (``VmHWM``), goal < 150 MiB for 1 GiB.

    .venv/bin/python bench/bench_s3.py                 # 1 GiB, once
    .venv/bin/python bench/bench_s3.py --size 256 --repeat 3

``BENCH_DIR`` chooses where the temporary files go (default: the system's).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # for tests.support.seaweed

from bench.bench_gateway import Server, free_port, peak_rss_mib, rss_mib  # noqa: E402
from tests.support.seaweed import SeaweedServer  # noqa: E402

MIB = 1 << 20


def make_file(path: Path, size: int) -> str:
    """``size`` random bytes at ``path``; returns their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for start in range(0, size, 16 * MIB):
            block = os.urandom(min(16 * MIB, size - start))
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while block := src.read(16 * MIB):
            digest.update(block)
    return digest.hexdigest()


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


async def file_body(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as src:
        while block := src.read(MIB):
            yield block


async def through_gateway(base: str, key: str, src: Path, dst: Path) -> tuple[float, float]:
    """Upload ``src`` and download it to ``dst``; returns (upload s, download s)."""
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        start = time.perf_counter()
        async with session.post(
            f"{base}/v1/files",
            data=file_body(src),
            headers={**headers, "Content-Length": str(src.stat().st_size)},
        ) as resp:
            assert resp.status == 201, await resp.text()
            file_id = (await resp.json())["id"]
        up = time.perf_counter() - start
        start = time.perf_counter()
        async with session.get(f"{base}/v1/files/{file_id}", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            with dst.open("wb") as out:
                async for chunk in resp.content.iter_chunked(MIB):
                    out.write(chunk)
        down = time.perf_counter() - start
        resp = await session.delete(f"{base}/v1/files/{file_id}", headers=headers)
        assert resp.status == 204, await resp.text()
    return up, down


def start_gateway(tmp: Path, seaweed: SeaweedServer, bucket: str) -> tuple[Server, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FILESTORE_", "AWS_"))}
    env.update(seaweed.aws_env())
    env.update(
        FILESTORE_PORT=str(port),
        FILESTORE_LOG_LEVEL="WARNING",
        FILESTORE_DATA_DIR=str(tmp / "filestore"),
        FILESTORE_MAX_FILE_SIZE="20GiB",
        **{f"FILESTORE_{k.upper()}": str(v) for k, v in seaweed.settings(bucket).items()},
    )
    return Server(
        [sys.executable, "-m", "filestore", "serve"], env, tmp
    ), f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024, help="MiB per transfer")
    parser.add_argument("--repeat", type=int, default=1, help="transfers each way (median)")
    args = parser.parse_args()
    size = args.size * MIB
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp_name:
        tmp = Path(tmp_name)
        src, back = tmp / "source.bin", tmp / "back.bin"
        expected = make_file(src, size)
        seaweed = SeaweedServer(tmp / "seaweed")
        seaweed.start()
        gateway: Server | None = None
        try:
            bucket = seaweed.create_bucket()
            s3 = seaweed.admin
            gateway, base = start_gateway(tmp, seaweed, bucket)
            idle = rss_mib(gateway.proc.pid)
            rates: dict[str, list[float]] = {}
            for round_ in range(args.repeat):
                key = f"boto3/{round_}"
                up = timed(lambda key=key: s3.upload_file(str(src), bucket, key))
                down = timed(lambda key=key: s3.download_file(bucket, key, str(back)))
                assert sha256_of(back) == expected
                s3.delete_object(Bucket=bucket, Key=key)
                rates.setdefault("boto3 up", []).append(size / up / MIB)
                rates.setdefault("boto3 down", []).append(size / down / MIB)
                up, down = asyncio.run(through_gateway(base, gateway.key, src, back))
                assert sha256_of(back) == expected
                rates.setdefault("filestore up", []).append(size / up / MIB)
                rates.setdefault("filestore down", []).append(size / down / MIB)
            peak = peak_rss_mib(gateway.proc.pid)
        finally:
            if gateway is not None:
                gateway.stop()
            seaweed.stop()
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{args.size} MiB through SeaweedFS S3 on loopback, median of {args.repeat} (MiB/s):")
    for way in ("up", "down"):
        print(
            f"  {'upload' if way == 'up' else 'download':<8}  boto3 {median['boto3 ' + way]:7.1f}"
            f"   filestore {median['filestore ' + way]:7.1f}"
            f"   ratio {median['filestore ' + way] / median['boto3 ' + way]:.2f}x"
        )
    print(f"gateway RSS: idle {idle:.1f} MiB, peak {peak:.1f} MiB (goal < 150 MiB)")


if __name__ == "__main__":
    main()

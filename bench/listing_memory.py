"""``python -m bench.listing_memory``: a batch job's listing memory against the dataset's
size, fsspec's ``find`` (what the driver used) beside ``list_entries`` (what it uses).

Over S3 (a moto server of its own, in its own process) it fills folders of 5,000 and
40,000 keys; on local disk, flat folders of 10,000 and 80,000 empty files. It lists each
both ways in this process, reporting the peak of Python memory traced while listing and
what is still traced once the listing is dropped (s3fs keeps a ``find``'s details in its
filesystem instance, which fsspec caches for the process). A warm-up listing first loads
botocore's models, which neither side counts. Flat memory means the two sizes' peaks are
close.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec

from modelship.core.settings import Settings
from modelship.ops.ray_env import free_port
from modelship.service.datasets import list_entries, storage_options


def fill(client: Any, prefix: str, keys: int) -> None:
    with ThreadPoolExecutor(16) as pool:
        names = (f"{prefix}/part-{i % 50:03d}/img-{i:08d}.jpg" for i in range(keys))
        list(pool.map(lambda key: client.put_object(Bucket="data", Key=key, Body=b"x"), names))


def measure(listing: Callable[[str], int], uri: str) -> dict[str, Any]:
    """``listing`` of ``uri`` run once under tracemalloc: it lists and drops what it
    listed."""
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    count = listing(uri)
    seconds = time.perf_counter() - started
    gc.collect()
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "entries": count,
        "peak_mib": round(peak / 2**20, 2),
        "kept_mib": round(kept / 2**20, 2),
        "seconds": round(seconds, 1),
    }


def main(sizes: list[int]) -> None:
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/")
                break
            except OSError:
                time.sleep(0.1)
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials)
        client.create_bucket(Bucket="data")
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        settings = Settings(
            object_store_url="s3://data/objects",
            object_store_options=options,
            batch_allowed_prefixes=["s3://data/"],
        )
        fill(client, "warm", 10)
        for size in sizes:
            fill(client, f"size-{size}", size)

        compare(settings, {size: f"s3://data/size-{size}" for size in sizes}, "s3://data/warm")
    finally:
        server.terminate()
        server.wait(timeout=10)


def compare(settings: Settings, folders: dict[int, str], warm: str) -> None:
    """Each folder (by its size) listed both ways, after a warm-up listing of ``warm``."""

    def find(uri: str) -> int:  # the driver's listing before: one list, sorted
        fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri, settings))
        return len(sorted(fs.find(path)))

    def streamed(uri: str) -> int:  # the driver's listing now: entries as they come
        return sum(1 for _ in list_entries(uri, True, settings))

    for way in (find, streamed):
        way(warm)
        results = {size: measure(way, uri) for size, uri in folders.items()}
        small, large = results[min(folders)], results[max(folders)]
        ratio = round(large["peak_mib"] / max(small["peak_mib"], 1e-3), 2)
        print(json.dumps({"listing": way.__name__, "by_size": results, "peak_ratio": ratio}))


def main_local(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as root:
        for size in [10, *sizes]:
            os.mkdir(f"{root}/size-{size}")
            for i in range(size):
                open(f"{root}/size-{size}/img-{i:08d}.jpg", "wb").close()
        settings = Settings(batch_allowed_prefixes=[root])
        compare(settings, {size: f"{root}/size-{size}" for size in sizes}, f"{root}/size-10")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000, 40_000])
    parser.add_argument("--local-sizes", type=int, nargs="+", default=[10_000, 80_000])
    arguments = parser.parse_args()
    main(arguments.sizes)
    main_local(arguments.local_sizes)

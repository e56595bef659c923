"""Latency and throughput of ``GET /recommend`` on a real ``metricrec serve`` process.

The model is ML-1M-sized: CML (d=100) trained for 2 epochs on the synthetic ML-1M preset
(``generate(preset="ml-1m", seed=0)``: 6,040 users x 3,706 items, 1,000,209 pairs), saved, and
served by ``python -m metricrec serve`` on 127.0.0.1 (exact retrieval; then again with an HNSW
index beside the model). The load generator is one asyncio process with an httpx client: 1 and
16 concurrent clients, each sending ``GET /recommend?user=U&n=10`` for random known users, back
to back, after a warm-up; bounded by a request count and a duration. Server and load generator
share the same machine (2 cores here), so the figures include the client's own CPU use.

    python -m benchmarks.service [--requests 3000] [--duration 30] [--clients 1 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from metricrec.data.synthetic import generate
from metricrec.models import CML
from metricrec.serving.ann import AnnIndex, index_dir_for
from metricrec.serving.process import ServerProcess

from .common import RESULTS, write_results


def train_model(path: Path, epochs: int) -> dict:
    """CML d=100 on the synthetic ML-1M preset, saved at ``path``."""
    data = generate(preset="ml-1m", seed=0)
    t0 = time.perf_counter()
    model = CML(factors=100, epochs=epochs, seed=0, show_progress=False, verbose=False).fit(data)
    model.save(path)
    return {"data": "synthetic ml-1m preset (seed 0)", "n_users": data.n_users, "n_items": data.n_items,
            "pairs": int(data.nnz), "factors": 100, "epochs": epochs,
            "train_seconds": round(time.perf_counter() - t0, 1), "users": [str(u) for u in data.user_ids.tolist()]}


async def _client(http, users: list[str], rng: np.random.Generator, budget: dict, lat: list, errors: list) -> None:
    while budget["left"] > 0 and time.perf_counter() < budget["deadline"]:
        budget["left"] -= 1
        user = users[int(rng.integers(len(users)))]
        t0 = time.perf_counter()
        try:
            r = await http.get("/recommend", params={"user": user, "n": 10})
            ok = r.status_code == 200
        except Exception as exc:  # a transport error counts as a failed request
            ok, r = False, exc
        lat.append(time.perf_counter() - t0)
        if not ok:
            errors.append(str(getattr(r, "status_code", r)))


async def _load(url: str, users: list[str], clients: int, requests: int, duration: float, seed: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        warm = {"left": 50, "deadline": time.perf_counter() + 10}
        await asyncio.gather(*[_client(http, users, np.random.default_rng(seed + 99), warm, [], [])
                               for _ in range(min(clients, 4))])
        budget = {"left": requests, "deadline": time.perf_counter() + duration}
        lat: list[float] = []
        errors: list[str] = []
        t0 = time.perf_counter()
        await asyncio.gather(*[_client(http, users, np.random.default_rng(seed + i), budget, lat, errors)
                               for i in range(clients)])
        wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {"clients": clients, "requests": len(lat), "seconds": round(wall, 2), "errors": len(errors),
            "requests_per_s": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p90_ms": round(float(np.percentile(ms, 90)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2)}


def _cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one when ``pid`` is None; Linux for a child)."""
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_server(model_dir: Path, users: list[str], args: argparse.Namespace, label: str) -> list[dict]:
    rows = []
    with ServerProcess(model_dir, timeout=120, log_dir=model_dir.parent) as server:
        for clients in args.clients:
            server_cpu, client_cpu = _cpu_seconds(server.proc.pid), _cpu_seconds()
            r = asyncio.run(_load(server.url, users, clients, args.requests, args.duration, seed=clients))
            n = r["requests"] + 50  # with the warm-up requests
            r["server_cpu_ms_per_request"] = round((_cpu_seconds(server.proc.pid) - server_cpu) / n * 1000, 2)
            r["client_cpu_ms_per_request"] = round((_cpu_seconds() - client_cpu) / n * 1000, 2)
            r["retrieval"] = label
            rows.append(r)
            print(f"  {label}, {clients:>2} clients: {r}", flush=True)
        out = server.stop()
    if "Traceback" in out:
        raise RuntimeError(f"the server printed a traceback:\n{out}")
    return rows


def markdown(result: dict) -> str:
    env, m = result["environment"], result["model"]
    lines = [f"# Service: GET /recommend (n=10) on an ML-1M-sized model ({env['cpus']} cores, load "
             f"{env['load_before']} -> {env['load_after']}, {env['date']})", "",
             f"Model: CML d={m['factors']}, {m['epochs']} epochs on the {m['data']}: {m['n_users']:,} users x "
             f"{m['n_items']:,} items. Server: `python -m metricrec serve` on 127.0.0.1 (uvicorn, one process); "
             "load generator: one asyncio + httpx process on the same machine.", "",
             "| retrieval | clients | requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms | "
             "server CPU ms/req | client CPU ms/req |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['retrieval']} | {r['clients']} | {r['requests']} | {r['errors']} | "
                     f"{r['requests_per_s']:,.0f} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} | "
                     f"{r['server_cpu_ms_per_request']} | {r['client_cpu_ms_per_request']} |")
    lines += ["", "CPU ms/req: CPU time the server process and the load generator spent per request (user + "
              "system), independent of how busy the machine was; on an idle machine with C cores the "
              "throughput ceiling is about C x 1000 / (server + client CPU ms)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000, help="requests per run (upper bound)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per run (upper bound)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--no-index", action="store_true", help="exact retrieval only")
    ap.add_argument("--out", type=Path, default=RESULTS / "service")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="metricrec-bench-") as tmp:
        model_dir = Path(tmp) / "model"
        facts = train_model(model_dir, args.epochs)
        users = facts.pop("users")
        print(f"model: {facts}", flush=True)
        runs = run_server(model_dir, users, args, "exact")
        if not args.no_index:
            from metricrec.models import load_model

            table = load_model(model_dir).item_embeddings
            AnnIndex.build(table, "hnsw", m=32, ef_construction=100, ef_search=64).save(index_dir_for(model_dir))
            runs += run_server(model_dir, users, args, "hnsw (m=32, ef_search=64)")
    result = {"model": facts, "runs": runs, "bounds": {"requests": args.requests, "duration_s": args.duration},
              "environment": {"cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                              "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
                              "date": time.strftime("%Y-%m-%d %H:%M:%S")}}
    write_results(args.out, result, markdown(result))
    return result


if __name__ == "__main__":
    main()

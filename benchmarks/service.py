"""Throughput, latency, CPU and memory of ``GET /recommend`` on a real ``metricrec serve``, with wrk.

The model is ML-1M-sized: CML (d=100) trained for 2 epochs on the synthetic ML-1M preset
(``generate(preset="ml-1m", seed=0)``: 6,040 users x 3,706 items, 1,000,209 pairs), saved, and
served by ``python -m metricrec serve`` on 127.0.0.1. The load generator is wrk (Debian package
``wrk``: compiled, one thread, so that the client's own cost does not decide the figure), driven by a
Lua script that sends ``GET /recommend?user=U&n=10`` for random known users over C keep-alive
connections (C concurrent clients, closed loop), for a fixed duration after a warm-up.

Measured per run:

- req/s, p50/p90/p99/max latency (wrk's own histogram), errors (non-2xx answers plus socket errors);
- server CPU per request: user + system CPU of the supervisor and every worker (``/proc/PID/stat``)
  over the run, divided by the requests; the client's (wrk's) CPU per request the same way;
- memory: PSS (``/proc/PID/smaps_rollup``) of the supervisor and each worker, 1 worker against N,
  and the resident/proportional size of the mapped table files in each worker (``/proc/PID/smaps``);
- reload under load: wrk with 16 clients while the model folder is re-saved with a re-trained model
  and ``POST /reload`` is sent, then a SIGHUP: failed requests (must be 0) and the reload times.

Configurations: exact retrieval with the default number of workers (the usable cores) with and
without micro-batching (``--no-batching``), one worker, and an HNSW index beside the model. All the
servers run at once and the runs are interleaved over ``--repeat`` rounds, each row the median of
its rounds, so that the machine's other load falls on every configuration alike. Server and load
generator share the machine (2 cores here): wrk's CPU is taken from the server's.

    python -m benchmarks.service [--duration 6] [--repeat 3] [--clients 1 4 16 64] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from metricrec.data.synthetic import generate
from metricrec.models import CML
from metricrec.serving.ann import AnnIndex, index_dir_for
from metricrec.serving.process import ServerProcess
from metricrec.serving.workers import usable_cores

from .common import RESULTS, write_results

#: wrk's script: a random known user per request; the summary as one JSON line at the end.
WRK_SCRIPT = r"""
local users = {}
init = function(args)
  for line in io.lines(args[1]) do users[#users + 1] = line end
  math.randomseed(tonumber(args[2] or "1"))
end
request = function()
  return wrk.format("GET", "/recommend?user=" .. users[math.random(#users)] .. "&n=10")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "non2xx": %d, "socket_errors": %d}\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


def train_model(path: Path, epochs: int, seed: int = 0) -> dict:
    """CML d=100 on the synthetic ML-1M preset, saved at ``path``."""
    data = generate(preset="ml-1m", seed=0)
    t0 = time.perf_counter()
    model = CML(factors=100, epochs=epochs, seed=seed, show_progress=False, verbose=False).fit(data)
    model.save(path)
    return {"data": "synthetic ml-1m preset (seed 0)", "n_users": data.n_users, "n_items": data.n_items,
            "pairs": int(data.nnz), "factors": 100, "epochs": epochs,
            "train_seconds": round(time.perf_counter() - t0, 1), "users": [str(u) for u in data.user_ids.tolist()]}


# ---------------------------------------------------------------------- /proc
def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_pids(server: ServerProcess) -> list[int]:
    return [server.proc.pid, *server.worker_pids()]


def _server_cpu(server: ServerProcess) -> float:
    total = 0.0
    for pid in _server_pids(server):
        try:
            total += _cpu_seconds(pid)
        except OSError:  # a worker that just exited
            pass
    return total


def _pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _table_mappings(pid: int) -> dict[str, dict[str, int]]:
    """Rss and Pss (kB) of each mapped ``tables/*.npy`` file of a worker."""
    out: dict[str, dict[str, int]] = {}
    current = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and all(c in "0123456789abcdef-" for c in head[0]):
            current = head[-1] if len(head) >= 6 and "/tables/" in head[-1] else None
            if current:
                out.setdefault(Path(current).name, {"rss_kb": 0, "pss_kb": 0})
        elif current and line.startswith(("Rss:", "Pss:")):
            out[Path(current).name]["rss_kb" if line.startswith("Rss") else "pss_kb"] += int(head[1])
    return out


def memory(server: ServerProcess) -> dict:
    workers = server.worker_pids()
    tables = {pid: _table_mappings(pid) for pid in workers}
    table_rss = [sum(v["rss_kb"] for v in t.values()) for t in tables.values()]
    table_pss = [sum(v["pss_kb"] for v in t.values()) for t in tables.values()]
    return {"workers": len(workers), "supervisor_pss_mb": round(_pss_kb(server.proc.pid) / 1024, 1),
            "worker_pss_mb": [round(_pss_kb(p) / 1024, 1) for p in workers],
            "total_pss_mb": round(sum(_pss_kb(p) for p in _server_pids(server)) / 1024, 1),
            "tables_rss_mb_per_worker": [round(x / 1024, 2) for x in table_rss],
            "tables_pss_mb_sum": round(sum(table_pss) / 1024, 2),
            "table_files": sorted(next(iter(tables.values()), {}))}


# ---------------------------------------------------------------------- wrk
def wrk(url: str, clients: int, seconds: float, users_file: Path, script: Path, seed: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script),
                           url, "--", str(users_file), str(seed)], capture_output=True, text=True,
                          timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    r = json.loads(line[4:])
    r["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return r


def load_run(server: ServerProcess, clients: int, args: argparse.Namespace, files: tuple[Path, Path],
             label: str) -> dict:
    wrk(server.url, clients, args.warmup, *files, seed=clients + 1000)
    cpu0 = _server_cpu(server)
    r = wrk(server.url, clients, args.duration, *files, seed=clients)
    cpu = _server_cpu(server) - cpu0
    n, secs = r["requests"], r["duration_us"] / 1e6
    row = {"config": label, "clients": clients, "requests": n, "seconds": round(secs, 2),
           "errors": r["non2xx"] + r["socket_errors"], "requests_per_s": round(n / secs, 1),
           "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
           "max_ms": r["max_us"] / 1000, "server_cpu_ms_per_request": round(cpu / max(n, 1) * 1000, 3),
           "client_cpu_ms_per_request": round(r["client_cpu_s"] / max(n, 1) * 1000, 3),
           "load_avg": round(os.getloadavg()[0], 2)}
    print(f"  {label}, {clients:>2} clients: {row}", flush=True)
    return row


def serve(model_dir: Path, *extra: str) -> ServerProcess:
    """``metricrec serve`` without its access log, unless ``extra`` holds ``--access-log`` (then the
    lines go to the server's log file)."""
    if "--access-log" in extra:
        return ServerProcess(model_dir, *(x for x in extra if x != "--access-log"), timeout=180,
                             log_dir=model_dir.parent)
    return ServerProcess(model_dir, "--no-access-log", *extra, timeout=180, log_dir=model_dir.parent)


def _check(out: str) -> None:
    if "Traceback" in out:
        raise RuntimeError(f"the server printed a traceback:\n{out}")


def reload_under_load(model_dir: Path, retrained: Path, args: argparse.Namespace, files: tuple[Path, Path],
                      workers: int) -> dict:
    """wrk with 16 clients; meanwhile the model folder is replaced by a re-trained model and reloaded
    (``POST /reload``), then reloaded again by SIGHUP."""
    import httpx

    with serve(model_dir, "--exact", "--workers", str(workers)) as server:
        result: dict = {}
        seconds = max(args.duration, 8.0)
        runner = threading.Thread(target=lambda: result.update(wrk(server.url, 16, seconds, *files, seed=7)))
        runner.start()
        time.sleep(seconds / 4)
        from metricrec.models import load_model

        load_model(retrained).save(model_dir)  # an atomic re-save, as after a re-training
        t0 = time.perf_counter()
        r = httpx.post(server.url + "/reload", timeout=120)
        reload_s = time.perf_counter() - t0
        gen = r.json().get("generation")
        time.sleep(seconds / 4)
        os.kill(server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and httpx.get(server.url + "/health").json()["generation"] < 3:
            time.sleep(0.05)
        runner.join()
        gens = {httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)).get(server.url + "/health").json()[
            "generation"] for _ in range(20)}
        out = server.stop()
    _check(out)
    n = result["requests"]
    row = {"clients": 16, "workers": workers, "requests": n, "seconds": round(result["duration_us"] / 1e6, 2),
           "failed": result["non2xx"] + result["socket_errors"], "p50_ms": result["p50_us"] / 1000,
           "p99_ms": result["p99_us"] / 1000, "max_ms": result["max_us"] / 1000,
           "reload_status": r.status_code, "reload_generation": gen, "reload_answer_s": round(reload_s, 3),
           "generations_after": sorted(gens), "sighup_reloaded": "SIGHUP: reloaded" in out}
    print(f"  reload under load: {row}", flush=True)
    return row


def markdown(result: dict) -> str:
    env, m = result["environment"], result["model"]
    lines = [f"# Service: GET /recommend (n=10) on an ML-1M-sized model, wrk as the client "
             f"({env['cpus']} cores, load {env['load_before']} -> {env['load_after']}, {env['date']})", "",
             f"Model: CML d={m['factors']}, {m['epochs']} epochs on the {m['data']}: {m['n_users']:,} users x "
             f"{m['n_items']:,} items. Server: `python -m metricrec serve` on 127.0.0.1 (`--no-access-log` but in the "
             "rows that say the access log is on, whose lines go to a file; uvicorn "
             "with httptools + uvloop, N worker processes); client: wrk, one thread, C keep-alive connections, a "
             f"random known user per request, {result['bounds']['duration_s']} s per run after "
             f"{result['bounds']['warmup_s']} s of warm-up, on the same machine. Every server runs at once and "
             f"the runs are interleaved over {result['bounds']['repeats']} rounds; each row is the median of its "
             "rounds (the JSON keeps every sample; `load` is the 1-minute load average, the benchmark's own "
             "processes included).", "",
             "| config | clients | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | server CPU ms/req | "
             "wrk CPU ms/req | load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['config']} | {r['clients']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                     f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | {r['errors']} | "
                     f"{r['server_cpu_ms_per_request']:.3f} | {r['client_cpu_ms_per_request']:.3f} | "
                     f"{r['load_avg']} |")
    lines += ["", "Server CPU ms/req: user + system CPU of the supervisor and all workers over the run, per "
              "request (independent of how busy the machine was, though a loaded machine makes every "
              "instruction slower); wrk CPU ms/req: the load generator's.", "",
              "## Memory: 1 worker against N (PSS from /proc/PID/smaps_rollup)", "",
              "| workers | total PSS MB | supervisor MB | each worker MB | mapped tables RSS MB per worker | "
              "tables PSS MB, all workers |", "|---|---|---|---|---|---|"]
    for mem in result["memory"]:
        lines.append(f"| {mem['workers']} | {mem['total_pss_mb']} | {mem['supervisor_pss_mb']} | "
                     f"{', '.join(map(str, mem['worker_pss_mb']))} | "
                     f"{', '.join(map(str, mem['tables_rss_mb_per_worker']))} | {mem['tables_pss_mb_sum']} |")
    lines += ["", f"Mapped table files (`tables/*.npy` of the serving cache): {', '.join(result['memory'][0]['table_files'])}. "
              "Each worker maps the same files: the tables' PSS summed over the workers is one copy whatever N.", ""]
    rl = result.get("reload")
    if rl:
        lines += ["## Reload under load", "",
                  f"wrk, 16 clients, {rl['seconds']} s against {rl['workers']} workers; meanwhile the model folder is "
                  f"replaced by a re-trained model and `POST /reload` is sent (answered {rl['reload_status']} in "
                  f"{rl['reload_answer_s']} s, generation {rl['reload_generation']}, once every worker served it), "
                  f"then SIGHUP (reloaded: {rl['sighup_reloaded']}): **{rl['failed']} failed** of "
                  f"{rl['requests']:,} requests; p50 {rl['p50_ms']:.2f} ms, p99 {rl['p99_ms']:.2f} ms, max "
                  f"{rl['max_ms']:.1f} ms; generations answered afterwards: {rl['generations_after']}.", ""]
    return "\n".join(lines) + "\n"


def _median_row(samples: list[dict]) -> dict:
    """One row per (config, clients): the median of each figure over the repeats, the samples kept."""
    row = dict(samples[0])
    for key in ("requests_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "server_cpu_ms_per_request",
                "client_cpu_ms_per_request", "load_avg"):
        row[key] = round(float(np.median([x[key] for x in samples])), 3)
    row["requests"] = int(sum(x["requests"] for x in samples))
    row["errors"] = int(sum(x["errors"] for x in samples))
    row["repeats"] = len(samples)
    row["samples"] = [{k: x[k] for k in ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request",
                                          "load_avg")} for x in samples]
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each run")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds over every (configuration, clients) run, interleaved; the tables show medians")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="workers of the main runs (default: usable cores)")
    ap.add_argument("--quick", action="store_true", help="the main configuration, the memory and the reload only")
    ap.add_argument("--out", type=Path, default=RESULTS / "service")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("benchmarks.service needs wrk (Debian: apt-get install wrk)")
    workers = args.workers or usable_cores()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="metricrec-bench-") as tmp:
        tmp = Path(tmp)
        model_dir, retrained = tmp / "model", tmp / "retrained"
        facts = train_model(model_dir, args.epochs)
        train_model(retrained, args.epochs, seed=1)
        users = facts.pop("users")
        users_file, script = tmp / "users.txt", tmp / "recommend.lua"
        users_file.write_text("\n".join(users) + "\n")
        script.write_text(WRK_SCRIPT)
        files = (users_file, script)
        print(f"model: {facts}", flush=True)
        configs = [(f"exact, {workers} workers", ("--exact", "--workers", str(workers)), args.clients)]
        if not args.quick:
            from metricrec.models import load_model

            table = load_model(model_dir).item_embeddings  # the index beside the model; --exact ignores it
            AnnIndex.build(table, "hnsw", m=32, ef_construction=100, ef_search=64).save(index_dir_for(model_dir))
            configs += [(f"exact, {workers} workers, no batching",
                         ("--exact", "--workers", str(workers), "--no-batching"), args.clients),
                        ("exact, 1 worker", ("--exact", "--workers", "1"), [c for c in args.clients if c in (1, 16, 64)]),
                        (f"exact, {workers} workers, access log on", ("--exact", "--workers", str(workers), "--access-log"),
                         [c for c in args.clients if c in (1, 16)]),
                        (f"hnsw (m=32, ef_search=64), {workers} workers", ("--workers", str(workers)),
                         [c for c in args.clients if c in (1, 16)])]
        samples: dict[tuple[str, int], list[dict]] = {}
        mems = []
        servers = [(label, serve(model_dir, *extra), clients) for label, extra, clients in configs]  # all at once:
        try:  # the repeats interleave the configurations, so that the machine's other load hits them alike
            for rnd in range(args.repeat):
                for label, server, clients in servers:
                    for c in clients:
                        samples.setdefault((label, c), []).append(load_run(server, c, args, files, label))
            for label, server, _ in servers:
                if label in (f"exact, {workers} workers", "exact, 1 worker"):
                    mems.append(memory(server))
        finally:
            for _, server, _ in servers:
                _check(server.stop())
        runs = [_median_row(v) for v in samples.values()]
        if workers > 1 and all(m["workers"] != 1 for m in mems):
            with serve(model_dir, "--exact", "--workers", "1") as server:
                for c in (1, 16):  # the tables paged in as under load
                    wrk(server.url, c, 1, *files, seed=c)
                mems.append(memory(server))
        if index_dir_for(model_dir).exists():
            shutil.rmtree(index_dir_for(model_dir))
        reload_row = reload_under_load(model_dir, retrained, args, files, workers)
    mems.sort(key=lambda m: m["workers"])
    result = {"model": facts, "runs": runs, "memory": mems, "reload": reload_row,
              "bounds": {"duration_s": args.duration, "warmup_s": args.warmup, "repeats": args.repeat},
              "environment": {"cpus": os.cpu_count(), "usable_cores": usable_cores(),
                              "machine": platform.processor() or platform.machine(),
                              "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
                              "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
                              "date": time.strftime("%Y-%m-%d %H:%M:%S")}}
    write_results(args.out, result, markdown(result))
    return result


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Side-by-side benchmark: regcache vs registry:2 (proxy mode) vs the limits (issue 7).

    python3 bench/run.py            # full: 1 GiB blob, 3 repetitions (5 for hits), 10 s manifest load (~7 min)
    python3 bench/run.py --quick    # 256 MiB, 3 repetitions (5 for hits), 3 s load (~2.5 min)
    python3 bench/run.py --smoke    # 4 MiB, 1 repetition, 0.5 s load (~15 s; CI)

Everything listens on 127.0.0.1; every process is stopped by pid at the end, also on errors
and Ctrl-C. Prints a markdown table (medians, ratios) and writes bench/results/<date>.json
and bench/results/latest.json. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import figures
import report
from load import hey_available
from procs import Procs
from profiling import Recorder, hotspots, pyspy_available
from seed import seed
from servers import REPO_ROOT, Cache, Regcache, Registry2Proxy, Upstream, regcache_available

RESULTS = Path(__file__).resolve().parent / "results"
NPROC = os.cpu_count() or 1


@dataclass
class Plan:
    mode: str
    blob_size: int
    reps: int
    seconds: float          # manifest load per repetition, caches
    limit_seconds: float    # manifest load per repetition, the direct-upstream limit
    hit_reps: int = 0       # hits are cheap and one loopback stream is bimodal: more reps
    concurrency: int = 32
    clients: int = 8


MODES = {
    "full": Plan("full", 1 << 30, 3, 10, 3, hit_reps=5),
    "quick": Plan("quick", 256 << 20, 3, 3, 2, hit_reps=5),
    "smoke": Plan("smoke", 4 << 20, 1, 0.5, 0.5, hit_reps=1),
}


class Bench:
    """One run: the servers, the raw repetitions and the errors met on the way."""

    def __init__(self, plan: Plan, workdir: Path, caches: list[str], profile: bool,
                 results: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.procs = Procs()
        self.raw: dict[str, dict[str, list]] = {}
        self.errors: list[str] = []
        self.profiles: dict[str, dict] = {}
        self.pending: dict[str, list[Recorder]] = {}
        self.cache_names = caches
        self.caches: list[Cache] = []
        self.profile = profile
        self.results = results
        self.t0 = time.monotonic()

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def measure(self, figure: str, target: str, fn, *args, **kw) -> None:
        """Run one repetition; an error is recorded for its cell, the run goes on."""
        try:
            result = fn(*args, **kw)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
            self.errors.append(f"{figure} / {target}: {result['error']}")
            self.log(f"  ERROR {figure} {target}: {result['error']}")
        self.raw.setdefault(figure, {}).setdefault(target, []).append(result)

    def setup(self) -> None:
        self.upstream = Upstream(self.procs, self.workdir)
        self.upstream.start_registry()
        self.log(f"seeding a {self.plan.blob_size >> 20} MiB blob and two images")
        self.seeded = seed(self.upstream.registry_port, self.plan.blob_size)
        self.upstream.start_nginx(self.seeded.tags(), self.seeded.manifest_type, self.seeded.blob_hex)
        classes = {"registry:2": Registry2Proxy, "regcache": Regcache}
        for name in self.cache_names:
            cache = classes[name](self.procs, self.workdir, self.upstream.url)
            try:
                cache.start()
                self.caches.append(cache)
            except Exception as exc:
                self.errors.append(f"{name} did not start: {exc}")
                self.log(f"  ERROR {name} did not start: {exc}")
        self.procs.start_sampler(lambda: [c.proc for c in self.caches if c.proc])

    def run(self) -> None:
        self.setup()
        p, s = self.plan, self.seeded
        self.log("cold miss, 1 client")
        for _ in range(p.reps):
            for c in self.caches:
                self.measure("cold", c.name, figures.cold_single, c, self.upstream, s,
                             self.profiled("cold"))
            self.measure("cold", "limit", figures.direct, self.upstream, s, 1)

        self.log("hits")
        self.hits()

        self.log("manifests")
        recorders = self.start_profile("manifests")
        for kind in figures.MANIFEST_KINDS:
            for _ in range(p.reps):
                for c in self.caches:
                    self.measure(f"manifest_{kind}", c.name, figures.manifests, c.port, kind, s,
                                 self.upstream, p.concurrency, p.seconds)
                self.measure(f"manifest_{kind}", "limit", figures.manifests, self.upstream.port,
                             kind, s, self.upstream, p.concurrency, p.limit_seconds, True)
        self.stop_profile("manifests", recorders)

        self.finish_profiles()
        self.log(f"{p.clients} concurrent cold requests")
        for _ in range(p.reps):
            for c in self.caches:
                self.measure("cold8", c.name, figures.cold_concurrent, c, self.upstream, s, p.clients,
                             self.profiled("cold8"))
            self.measure("cold8", "limit", figures.direct, self.upstream, s, 1)
            self.measure("cold8", "direct-8-clients", figures.direct, self.upstream, s, p.clients)

    def hits(self) -> None:
        p, s, up = self.plan, self.seeded, self.upstream
        targets = [(c.name, c.port, s.blob_path()) for c in self.caches]
        targets += [("nginx-sendfile", up.sendfile_port, "/blob"), ("nginx-copy", up.copy_port, "/blob")]
        for c in self.caches:   # the blob is cached by the cold phase; check it is whole and right
            self.measure("hit_verify", c.name, figures.fetch, c.port, s.blob_path(), 1,
                         s.blob_size, s.blob_hex)
        mark = up.access_lines()
        recorders = self.start_profile("hits")
        for clients, figure in ((1, "hit_1"), (p.clients, "hit_8")):
            for _ in range(max(p.reps, p.hit_reps)):
                for name, port, path in targets:
                    self.measure(figure, name, figures.hit, port, path, s, clients)
        self.stop_profile("hits", recorders)
        gets = figures.count_blob_requests(up, mark, s.blob_hex)["gets"]
        self.raw["hit_upstream_gets"] = {"all caches": [{"gets": gets}]}
        if gets:
            self.errors.append(f"hits: {gets} upstream blob GETs during the hit phase (expected 0)")

    def start_profile(self, phase: str) -> list:
        """py-spy on regcache for a phase in which it is not restarted (hits, manifests)."""
        if not self.profile:
            return []
        self.results.mkdir(parents=True, exist_ok=True)
        recs = [Recorder(c.proc.proc.pid, self.results / f"profile-{phase}-{c.name}.txt")
                for c in self.caches if c.name == "regcache" and c.proc]
        time.sleep(0.5)   # py-spy needs a moment to attach
        return recs

    def stop_profile(self, phase: str, recorders: list) -> None:
        for rec in recorders:
            rec.stop()
        if recorders:
            self.profiles[phase] = {"files": [str(r.out) for r in recorders],
                                    **hotspots([r.out for r in recorders])}

    def profiled(self, phase: str):
        """A context manager factory for cold figures, which restart the cache every
        repetition: one py-spy recording per repetition, summed by finish_profiles()."""
        @contextmanager
        def around(cache: Cache):
            if not self.profile or cache.name != "regcache":
                yield
                return
            recs = self.start_profile(f"{phase}-{len(self.pending.setdefault(phase, []))}")
            try:
                yield
            finally:
                for rec in recs:
                    rec.stop()
                self.pending[phase].extend(recs)
        return around

    def finish_profiles(self) -> None:
        for phase, recs in self.pending.items():
            if recs:
                self.profiles[phase] = {"files": [str(r.out) for r in recs],
                                        **hotspots([r.out for r in recs])}
        self.pending = {}

    def peak_rss(self) -> dict[str, float | None]:
        return {c.name: c.peak_rss_mib() for c in self.caches}


def parse_args(argv: list[str] | None) -> tuple[Plan, argparse.Namespace]:
    ap = argparse.ArgumentParser(description="regcache vs registry:2 vs the limits (issue 7)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke")
    ap.add_argument("--reps", type=int, help="repetitions per figure")
    ap.add_argument("--seconds", type=float, help="manifest load per repetition")
    ap.add_argument("--blob-mib", type=int, help="size of the big blob in MiB")
    ap.add_argument("--caches", default="registry:2,regcache",
                    help="comma-separated caches to measure (default: registry:2,regcache)")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy regcache during the hit and manifest phases")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="folder for the JSON records and profiles (default: bench/results)")
    args = ap.parse_args(argv)
    base = MODES[args.mode or "full"]
    plan = Plan(base.mode, base.blob_size, base.reps, base.seconds, base.limit_seconds,
                base.hit_reps)
    if args.reps:
        plan.reps = plan.hit_reps = args.reps
    if args.seconds:
        plan.seconds = args.seconds
        plan.limit_seconds = min(plan.limit_seconds, args.seconds)
    if args.blob_mib:
        plan.blob_size = args.blob_mib << 20
    return plan, args


def main(argv: list[str] | None = None) -> int:
    plan, args = parse_args(argv)
    for why in (hey_available(), shutil.which("docker-registry") is None and "docker-registry is not installed",
                shutil.which("nginx") is None and "nginx is not installed"):
        if why:
            print(f"error: {why}", file=sys.stderr)
            return 2
    caches = [c.strip() for c in args.caches.split(",") if c.strip()]
    notes: list[str] = []
    if "regcache" in caches and (why := regcache_available()):
        caches.remove("regcache")
        notes.append(f"regcache column empty: {why}")
    if args.profile and (why := pyspy_available()):
        args.profile = False
        notes.append(f"no profile: {why}")
    meta = report.machine(REPO_ROOT)
    workdir = Path(tempfile.mkdtemp(prefix="regcache-bench-"))
    bench = Bench(plan, workdir, caches, args.profile, args.results)
    bench.log(f"mode {plan.mode}, work dir {workdir}")
    interrupted = False
    # Ctrl-C, and SIGTERM from a CI runner or `timeout`, both end in the finally below,
    # which stops every server by pid. (A shell's background job starts with SIGINT ignored.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        bench.run()
    except KeyboardInterrupt:
        interrupted = True
        bench.errors.append("interrupted")
    except Exception as exc:
        bench.errors.append(f"aborted: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    finally:
        bench.finish_profiles()
        bench.procs.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - bench.t0
    rows = report.build_rows(bench.raw, bench.peak_rss())
    notes += bench.errors
    print(f"\n## regcache bench ({plan.mode}): {meta['date']}, {meta['nproc']} x {meta['cpu']}, "
          f"kernel {meta['kernel']}, commit {meta['commit']}, {elapsed:.0f} s, load average "
          f"{meta['loadavg_start'][0]:.1f} at start, {os.getloadavg()[0]:.1f} at end\n")
    print(report.table(rows))
    extra = limits_note(bench.raw)
    for line in extra + notes:
        print(f"- {line}")
    meta["loadavg_end"] = os.getloadavg()
    record = {"meta": {**meta, "mode": plan.mode, "plan": vars(plan), "elapsed_s": elapsed,
                       "caches": caches},
              "rows": report.rows_json(rows), "notes": extra + notes, "raw": bench.raw,
              "profiles": bench.profiles}
    stamp = meta["date"].replace(":", "").replace("-", "")
    for path in (args.results / f"{stamp}-{plan.mode}.json", args.results / "latest.json"):
        report.write_json(path, record)
    for phase, prof in bench.profiles.items():
        print(f"\nprofile ({phase}, {prof['samples']} samples, {', '.join(prof['files'])}): top self time")
        for name, pct in prof["self"][:10]:
            print(f"  {pct:5.1f}%  {name}")
    return 130 if interrupted else 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def limits_note(raw: dict) -> list[str]:
    """The individual limits behind the `limit` column, for the notes under the table."""
    med = report.median
    out = []
    for fig, label in (("hit_1", "1 client"), ("hit_8", "8 clients")):
        per = raw.get(fig, {})
        out.append(f"hit limit, {label}: nginx sendfile {fmt(med(per.get('nginx-sendfile'), 'mib_s'))} MiB/s, "
                   f"nginx 1 MiB copy {fmt(med(per.get('nginx-copy'), 'mib_s'))} MiB/s (limit = the faster)")
    for fig, label in (("hit_1", "1 client"), ("hit_8", "8 clients")):
        reps = [r for r in raw.get(fig, {}).get("nginx-copy", []) if "client_cpu_s" in r]
        if reps:
            share = sum(r["client_cpu_s"] for r in reps) / sum(r["wall_s"] for r in reps) / NPROC
            out.append(f"blob client CPU during the nginx 1 MiB copy hits, {label}: "
                       f"{100 * share:.0f}% of the machine")
    for kind in ("head_tag", "get_digest"):
        per = raw.get(f"manifest_{kind}", {})
        shares = []
        for target in ("regcache", "limit"):
            reps = [r for r in per.get(target, []) if r.get("client_cpu_s") and r.get("duration_s")]
            if reps:
                shares.append(f"{target} {100 * sum(r['client_cpu_s'] for r in reps) / sum(r['duration_s'] for r in reps) / NPROC:.0f}%")
        if shares:
            out.append(f"hey CPU during manifest {kind} (share of the machine): {', '.join(shares)}")
    return out


def fmt(v: float | None, f: str = "{:,.0f}") -> str:
    return "-" if v is None else f.format(v)


if __name__ == "__main__":
    sys.exit(main())

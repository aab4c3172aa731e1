"""The node image every local node boots from, and a tiny busybox image for test services.

The node image is Debian bookworm with systemd, sshd, python3, Docker with compose, HAProxy, Caddy
and keepalived, made to behave like a fresh VM (see ``image_recipe/customize.sh``). It is tagged
by the hash of its recipe, so it is built once, reused, and rebuilt only when the recipe changes.

Two build paths give the same image: a Dockerfile when the ``debian:bookworm`` base image is
available (locally or from a registry), else debootstrap from a Debian mirror + ``docker import``
(air-gapped sites and CI machines without a registry). A failed build leaves no tag and no
temporary folder behind, so a rerun starts clean.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dynia.errors import ProviderError
from dynia.providers.local.engine import Docker

RECIPE_DIR = Path(__file__).resolve().parent / "image_recipe"
SUITE = "bookworm"
BASE_IMAGE = f"debian:{SUITE}"
IMAGE_REPOSITORY = "dynia-node"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
NODE_ENTRYPOINT = "/usr/local/sbin/dynia-node-init"
RECIPE_LABEL = "dynia.recipe"
BUILD_PREFIX = "dynia-node-build-"

BuildMethod = Literal["dockerfile", "debootstrap"]
Progress = Callable[[str], None]

# debootstrap's milestones, forwarded as progress; the rest of its output goes to the build log.
_DEBOOTSTRAP_MILESTONES = re.compile(
    r"^I: (Retrieving Release|Resolving dependencies|Retrieving packages|Installing core"
    r"|Unpacking the base|Configuring the base|Base system installed)"
)


class ImageBuildError(ProviderError):
    """The node image (or the busybox test image) could not be built."""


@dataclass(frozen=True)
class BuildResult:
    tag: str
    image_id: str
    method: BuildMethod | Literal["existing"]
    seconds: float


def _silent(_: str) -> None:
    return None


def recipe_packages() -> list[str]:
    lines = (RECIPE_DIR / "packages.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def dockerfile_text(base_image: str = BASE_IMAGE) -> str:
    packages = " ".join(recipe_packages())
    return (
        f"FROM {base_image}\n"
        "ENV DEBIAN_FRONTEND=noninteractive\n"
        f"RUN apt-get update && apt-get install -y --no-install-recommends {packages}\n"
        "COPY recipe /tmp/dynia-recipe\n"
        f'RUN sh /tmp/dynia-recipe/customize.sh "" /tmp/dynia-recipe "$MIRROR" {SUITE}'
        " && rm -rf /tmp/dynia-recipe\n"
        "ENV container=docker\n"
        "STOPSIGNAL SIGRTMIN+3\n"
        f'CMD ["{NODE_ENTRYPOINT}"]\n'
    )


def recipe_hash() -> str:
    """Hash of everything that shapes the image: recipe files, suite and the Dockerfile."""
    digest = hashlib.sha256(f"suite={SUITE}\n".encode())
    digest.update(dockerfile_text().encode())
    for path in sorted(RECIPE_DIR.iterdir()):
        if path.is_file():
            digest.update(f"\0{path.name}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def node_image_tag() -> str:
    return f"{IMAGE_REPOSITORY}:{recipe_hash()[:12]}"


def node_image_present(docker: Docker | None = None) -> bool:
    return (docker or Docker()).exists("image", node_image_tag())


def choose_build_method(docker: Docker) -> BuildMethod:
    """Dockerfile when the base image is here or can be pulled, else debootstrap."""
    if docker.exists("image", BASE_IMAGE):
        return "dockerfile"
    pulled = docker.run(["pull", BASE_IMAGE], check=False, timeout=300)
    return "dockerfile" if pulled.returncode == 0 else "debootstrap"


def ensure_node_image(
    *,
    docker: Docker | None = None,
    progress: Progress = _silent,
    tag: str | None = None,
    mirror: str | None = None,
    method: BuildMethod | None = None,
    work_root: Path | None = None,
    base_image: str = BASE_IMAGE,
) -> BuildResult:
    """Return the node image, building it first if its tag is missing.

    ``tag`` defaults to the recipe-hash tag; ``mirror`` to ``$DYNIA_DEBIAN_MIRROR`` or Debian's;
    ``method`` is chosen automatically unless given; ``work_root`` holds the temporary build
    folder (default: the system's temporary directory); ``base_image`` is the Dockerfile
    path's base (another Debian bookworm image, e.g. from a private registry).
    """
    docker = docker or Docker()
    docker.ping()
    tag = tag or node_image_tag()
    mirror = mirror or os.environ.get("DYNIA_DEBIAN_MIRROR") or DEFAULT_MIRROR
    started = time.monotonic()
    # Two test sessions (or two operators) asking at once build the image once.
    with _build_lock(tag):
        existing = docker.inspect("image", [tag])
        if existing:
            return BuildResult(tag, existing[0]["Id"], "existing", time.monotonic() - started)
        method = method or choose_build_method(docker)
        progress(f"building node image {tag} via {method} (a few minutes, once)")
        with _build_dir(work_root) as build_dir:
            if method == "dockerfile":
                _build_with_dockerfile(docker, build_dir, tag, mirror, base_image)
            else:
                _build_with_debootstrap(docker, build_dir, tag, mirror, progress)
    image_id = docker.text(["image", "inspect", "--format", "{{.Id}}", tag])
    progress(f"node image {tag} ready")
    return BuildResult(tag, image_id, method, time.monotonic() - started)


@contextlib.contextmanager
def _build_lock(tag: str) -> Iterator[None]:
    lock_path = Path(tempfile.gettempdir()) / f"dynia-image-{tag.replace(':', '-')}.lock"
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _build_dir(work_root: Path | None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=BUILD_PREFIX, dir=work_root))
    try:
        yield path
    finally:
        remove_build_tree(path)


def remove_build_tree(path: Path) -> None:
    """Remove a build folder; first unmount anything left mounted inside it (an interrupted
    debootstrap can leave /proc mounted in its target, and deleting through it is dangerous)."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mountpoint in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
    shutil.rmtree(path, ignore_errors=True)


def _build_with_dockerfile(
    docker: Docker, build_dir: Path, tag: str, mirror: str, base_image: str
) -> None:
    shutil.copytree(RECIPE_DIR, build_dir / "recipe")
    dockerfile = dockerfile_text(base_image).replace("$MIRROR", mirror)
    (build_dir / "Dockerfile").write_text(dockerfile)
    result = docker.run(
        [
            "build",
            "--network=host",
            "--force-rm",
            "--label",
            f"{RECIPE_LABEL}={recipe_hash()}",
            "-t",
            tag,
            str(build_dir),
        ],
        check=False,
        timeout=1800,
    )
    if result.returncode != 0:
        _remove_intermediate_images(docker, result.stdout.decode(errors="replace"))
        raise ImageBuildError(
            f"building the node image {tag} from {base_image} failed:\n"
            + _tail(result.stdout + result.stderr),
            hint="check that the Debian mirror is reachable from the Docker engine, then rerun",
        )


def _remove_intermediate_images(docker: Docker, build_output: str) -> None:
    """Drop the untagged layers a failed build committed (hundreds of MB). Layers that a tagged
    image still uses refuse removal, which is what keeps this safe."""
    layers = list(dict.fromkeys(re.findall(r"---> ([0-9a-f]{12})\b", build_output)))
    for layer in reversed(layers):
        docker.run(["image", "rm", layer], check=False)


def _build_with_debootstrap(
    docker: Docker, build_dir: Path, tag: str, mirror: str, progress: Progress
) -> None:
    if os.geteuid() != 0:
        raise ImageBuildError(
            f"building the node image {tag} with debootstrap needs root",
            hint="run `sudo dynia local setup` once; later commands reuse the image",
        )
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            "debootstrap is not installed (needed to build the node image without a registry)",
            hint="install it: `sudo apt-get install debootstrap`, or run `sudo dynia local setup`",
        )
    rootfs = build_dir / "rootfs"
    _run_debootstrap(rootfs, mirror, build_dir / "debootstrap.log", progress)
    progress("debootstrap: customizing the root filesystem")
    customize = subprocess.run(
        ["sh", str(RECIPE_DIR / "customize.sh"), str(rootfs), str(RECIPE_DIR), mirror, SUITE],
        capture_output=True,
        check=False,
    )
    if customize.returncode != 0:
        raise ImageBuildError(
            "customizing the node image's root filesystem failed:\n"
            + _tail(customize.stdout + customize.stderr),
            hint="the recipe in dynia/providers/local/image_recipe/ is broken; reinstall dynia",
        )
    progress("importing the root filesystem into Docker")
    _import_rootfs(docker, rootfs, tag)


def _run_debootstrap(rootfs: Path, mirror: str, log_path: Path, progress: Progress) -> None:
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(recipe_packages())}",
        SUITE,
        str(rootfs),
        mirror,
    ]
    with open(log_path, "w+b") as log:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        for raw in process.stdout:
            log.write(raw)
            line = raw.decode(errors="replace").rstrip()
            if _DEBOOTSTRAP_MILESTONES.match(line):
                progress(f"debootstrap: {line[3:]}")
        returncode = process.wait()
        if returncode != 0:
            log.seek(0)
            raise ImageBuildError(
                f"debootstrap of Debian {SUITE} from {mirror} failed (exit {returncode}):\n"
                + _tail(log.read()),
                hint="check that the mirror answers (set DYNIA_DEBIAN_MIRROR to use another), "
                "then rerun; nothing was kept from this attempt",
            )


def _import_rootfs(docker: Docker, rootfs: Path, tag: str) -> None:
    """Stream the root filesystem into ``docker import``; the tag exists only if it succeeds.

    ``docker import`` cannot set a stop signal: nodes get ``--stop-signal`` when they run."""
    changes = [
        "ENV container=docker",
        f'CMD ["{NODE_ENTRYPOINT}"]',
        f"LABEL {RECIPE_LABEL}={recipe_hash()}",
    ]
    change_args = [arg for change in changes for arg in ("--change", change)]
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-c", "."],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert tar.stdout is not None
    imported = subprocess.run(
        [docker.binary, "import", *change_args, "-", tag],
        stdin=tar.stdout,
        capture_output=True,
        check=False,
    )
    tar.stdout.close()
    tar_error = tar.stderr.read() if tar.stderr else b""
    if tar.wait() != 0 or imported.returncode != 0:
        # A partial stream can still produce an image: make sure the tag does not survive.
        docker.run(["image", "rm", "-f", tag], check=False)
        raise ImageBuildError(
            f"importing the node image {tag} into Docker failed:\n"
            + _tail(imported.stderr + tar_error),
            hint="check free disk space and `docker info`, then rerun",
        )


def _tail(output: bytes, lines: int = 15) -> str:
    text = output.decode(errors="replace").strip().splitlines()
    return "\n".join(f"  {line}" for line in text[-lines:]) or "  (no output)"


BUSYBOX_BINARY = Path("/bin/busybox")


def ensure_busybox_binary(progress: Progress = _silent) -> Path:
    """The host's static busybox, installing busybox-static when missing and allowed."""
    if _is_static_busybox(BUSYBOX_BINARY):
        return BUSYBOX_BINARY
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ImageBuildError(
            "a static busybox binary is needed for the test service image",
            hint="install it: `sudo apt-get install busybox-static`",
        )
    progress("installing busybox-static")
    result = subprocess.run(
        ["apt-get", "install", "-y", "-q", "busybox-static"],
        capture_output=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        check=False,
    )
    if result.returncode != 0 or not _is_static_busybox(BUSYBOX_BINARY):
        raise ImageBuildError(
            "installing busybox-static failed:\n" + _tail(result.stdout + result.stderr),
            hint="run `sudo apt-get update && sudo apt-get install busybox-static`",
        )
    return BUSYBOX_BINARY


def _is_static_busybox(path: Path) -> bool:
    if not path.exists():
        return False
    ldd = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    return "not a dynamic executable" in (ldd.stdout + ldd.stderr)


def build_busybox_image(tag: str, docker: Docker | None = None) -> str:
    """A ~2 MB image holding only a static busybox (``busybox httpd`` serves test traffic).

    Returns the image id; an existing ``tag`` is reused.
    """
    docker = docker or Docker()
    existing = docker.inspect("image", [tag])
    if existing:
        return existing[0]["Id"]
    binary = ensure_busybox_binary()
    with tempfile.TemporaryDirectory(prefix="dynia-busybox-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        for folder in ("bin", "etc", "tmp", "www", "var/www"):
            (rootfs / folder).mkdir(parents=True)
        shutil.copy2(binary, rootfs / "bin" / "busybox")
        listed = subprocess.run([str(binary), "--list"], capture_output=True, text=True, check=True)
        for applet in listed.stdout.split():
            if applet != "busybox":
                (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\n")
        tar = subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
            capture_output=True,
            check=True,
        )
        docker.run(["import", "--change", 'CMD ["/bin/sh"]', "-", tag], input_data=tar.stdout)
    return docker.text(["image", "inspect", "--format", "{{.Id}}", tag])

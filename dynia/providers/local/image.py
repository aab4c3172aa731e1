"""The node image every local node boots from, and a tiny busybox image for test services.

The node image is Debian with systemd, sshd, python3, Docker with compose, HAProxy, Caddy and
keepalived, made to behave like a fresh VM (see ``image_recipe/customize.sh``). One recipe builds
every release in ``LOCAL_IMAGES``: ``debian-12`` (bookworm, Compose v1 ``docker-compose``) and
``debian-13`` (trixie, the Compose v2 plugin ``docker compose``). Each image is tagged by the hash
of its recipe and release, so both coexist, each is built once, reused, and rebuilt only when the
recipe changes.

Two build paths give the same image: a Dockerfile when the ``debian:<suite>`` base image is
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

from dynia.errors import ProviderError, check_choice
from dynia.providers.local.engine import Docker

RECIPE_DIR = Path(__file__).resolve().parent / "image_recipe"
# The node images the local provider builds: image name -> Debian suite.
LOCAL_IMAGES = {"debian-12": "bookworm", "debian-13": "trixie"}
DEFAULT_LOCAL_IMAGE = "debian-12"
SUITE = LOCAL_IMAGES[DEFAULT_LOCAL_IMAGE]
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


def recipe_packages(suite: str = SUITE) -> list[str]:
    """``packages.txt``, plus ``packages.<suite>.txt`` where a release names a package apart."""
    files = [RECIPE_DIR / "packages.txt", RECIPE_DIR / f"packages.{suite}.txt"]
    lines = [line for path in files if path.exists() for line in path.read_text().splitlines()]
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _recipe_files(suite: str) -> list[Path]:
    """The recipe files that shape the image of ``suite``: not another release's packages."""
    other_suites = {f"packages.{other}.txt" for other in LOCAL_IMAGES.values() if other != suite}
    return [p for p in sorted(RECIPE_DIR.iterdir()) if p.is_file() and p.name not in other_suites]


def check_local_image(image: str) -> str:
    """``image`` if the local provider can build it, else a UsageError naming the choices."""
    return check_choice("local node image", image, LOCAL_IMAGES)


def suite_of(image: str) -> str:
    return LOCAL_IMAGES[check_local_image(image)]


def dockerfile_text(base_image: str = BASE_IMAGE, suite: str = SUITE) -> str:
    packages = " ".join(recipe_packages(suite))
    return (
        f"FROM {base_image}\n"
        "ENV DEBIAN_FRONTEND=noninteractive\n"
        f"RUN apt-get update && apt-get install -y --no-install-recommends {packages}\n"
        "COPY recipe /tmp/dynia-recipe\n"
        f'RUN sh /tmp/dynia-recipe/customize.sh "" /tmp/dynia-recipe "$MIRROR" {suite}'
        " && rm -rf /tmp/dynia-recipe\n"
        "ENV container=docker\n"
        "STOPSIGNAL SIGRTMIN+3\n"
        f'CMD ["{NODE_ENTRYPOINT}"]\n'
    )


def recipe_hash(image: str = DEFAULT_LOCAL_IMAGE) -> str:
    """Hash of everything that shapes the image: recipe files, suite and the Dockerfile."""
    suite = suite_of(image)
    digest = hashlib.sha256(f"suite={suite}\n".encode())
    digest.update(dockerfile_text(f"debian:{suite}", suite).encode())
    for path in _recipe_files(suite):
        digest.update(f"\0{path.name}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def node_image_tag(image: str = DEFAULT_LOCAL_IMAGE) -> str:
    return f"{IMAGE_REPOSITORY}:{recipe_hash(image)[:12]}"


def node_image_present(docker: Docker | None = None, image: str = DEFAULT_LOCAL_IMAGE) -> bool:
    return (docker or Docker()).exists("image", node_image_tag(image))


def choose_build_method(docker: Docker, base_image: str = BASE_IMAGE) -> BuildMethod:
    """Dockerfile when the base image is here or can be pulled, else debootstrap."""
    if docker.exists("image", base_image):
        return "dockerfile"
    pulled = docker.run(["pull", base_image], check=False, timeout=300)
    return "dockerfile" if pulled.returncode == 0 else "debootstrap"


def ensure_node_image(
    *,
    docker: Docker | None = None,
    progress: Progress = _silent,
    tag: str | None = None,
    mirror: str | None = None,
    method: BuildMethod | None = None,
    work_root: Path | None = None,
    base_image: str | None = None,
    image: str = DEFAULT_LOCAL_IMAGE,
) -> BuildResult:
    """Return the node image of release ``image``, building it first if its tag is missing.

    ``tag`` defaults to the recipe-hash tag; ``mirror`` to ``$DYNIA_DEBIAN_MIRROR`` or Debian's;
    ``method`` is chosen automatically unless given; ``work_root`` holds the temporary build
    folder (default: the system's temporary directory); ``base_image`` is the Dockerfile
    path's base (default ``debian:<suite>``; another image of the same Debian release works,
    e.g. from a private registry).
    """
    suite = suite_of(image)
    base_image = base_image or f"debian:{suite}"
    docker = docker or Docker()
    docker.ping()
    tag = tag or node_image_tag(image)
    mirror = mirror or os.environ.get("DYNIA_DEBIAN_MIRROR") or DEFAULT_MIRROR
    started = time.monotonic()
    # Two test sessions (or two operators) asking at once build the image once.
    with _build_lock(tag):
        existing = docker.inspect("image", [tag])
        if existing:
            return BuildResult(tag, existing[0]["Id"], "existing", time.monotonic() - started)
        method = method or choose_build_method(docker, base_image)
        progress(f"building node image {tag} ({image}) via {method} (a few minutes, once)")
        recipe = _Recipe(image=image, suite=suite, tag=tag, mirror=mirror)
        with _build_dir(work_root) as build_dir:
            if method == "dockerfile":
                _build_with_dockerfile(docker, build_dir, recipe, base_image)
            else:
                _build_with_debootstrap(docker, build_dir, recipe, progress)
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


@dataclass(frozen=True)
class _Recipe:
    """What one build makes: release ``image`` (Debian ``suite``) tagged ``tag``."""

    image: str
    suite: str
    tag: str
    mirror: str


def _build_with_dockerfile(
    docker: Docker, build_dir: Path, recipe: _Recipe, base_image: str
) -> None:
    tag = recipe.tag
    shutil.copytree(RECIPE_DIR, build_dir / "recipe")
    dockerfile = dockerfile_text(base_image, recipe.suite).replace("$MIRROR", recipe.mirror)
    (build_dir / "Dockerfile").write_text(dockerfile)
    result = docker.run(
        [
            "build",
            "--network=host",
            "--force-rm",
            "--label",
            f"{RECIPE_LABEL}={recipe_hash(recipe.image)}",
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
    docker: Docker, build_dir: Path, recipe: _Recipe, progress: Progress
) -> None:
    tag = recipe.tag
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
    _run_debootstrap(rootfs, recipe, build_dir / "debootstrap.log", progress)
    progress("debootstrap: customizing the root filesystem")
    customize = subprocess.run(
        [
            "sh",
            str(RECIPE_DIR / "customize.sh"),
            str(rootfs),
            str(RECIPE_DIR),
            recipe.mirror,
            recipe.suite,
        ],
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
    _import_rootfs(docker, rootfs, tag, recipe_hash(recipe.image))


def _run_debootstrap(rootfs: Path, recipe: _Recipe, log_path: Path, progress: Progress) -> None:
    mirror = recipe.mirror
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(recipe_packages(recipe.suite))}",
        recipe.suite,
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
                f"debootstrap of Debian {recipe.suite} from {mirror} failed (exit {returncode}):\n"
                + _tail(log.read()),
                hint="check that the mirror answers (set DYNIA_DEBIAN_MIRROR to use another), "
                "then rerun; nothing was kept from this attempt",
            )


def _import_rootfs(docker: Docker, rootfs: Path, tag: str, recipe_digest: str) -> None:
    """Stream the root filesystem into ``docker import``; the tag exists only if it succeeds.

    ``docker import`` cannot set a stop signal: nodes get ``--stop-signal`` when they run."""
    changes = [
        "ENV container=docker",
        f'CMD ["{NODE_ENTRYPOINT}"]',
        f"LABEL {RECIPE_LABEL}={recipe_digest}",
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

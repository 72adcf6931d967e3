"""Installing the prebuilt OHIF Viewer (npm package `@ohif/app`) without Node.js.

Framework-free on purpose: every function takes explicit arguments, so the management
command (`install_ohif`), the health check and the tests share one implementation.

Layout under the install root::

    root/
      current -> 3.13.2-1a2b3c4d/      symlink, switched atomically
      3.13.2-1a2b3c4d/
        bundle.json                    what is installed (version, integrity, prefix)
        index.html                     OHIF's index.html, rewritten; served by Django
        static/                        the pruned, prefix-rewritten, precompressed dist/
      downloads/app-3.13.2.tgz         verified tarball, kept to re-install without network

The build-time asset prefix of OHIF is `/` (`__webpack_require__.p = "/"`); serving under any
other path needs the literal rewritten in the bundles, the stylesheet, the manifest and
index.html (docs/ohif.md). Doing it once here keeps serving a plain file copy.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import brotli
import requests

APP_CONFIG_PLACEHOLDER = "__KHEOPS_OHIF_APP_CONFIG_URL__"
MARKER = "bundle.json"

# What a radiology viewer never loads (measured on 3.13.2: /viewer and /segmentation make
# no request to these): the onnxruntime AI models, the slide-microscopy viewer, source
# maps, the unused service worker and samples, and host-specific config files.
PRUNED_DIRS = ("ort/", "dicom-microscopy-viewer/", "customizations/")
PRUNED_FILES = frozenset(
    {
        "sw.js",
        "google.js",
        "oidc-client.min.js",
        "silent-refresh.html",
        "es6-shim.min.js",
        "polyfill.min.js",
        "_headers",
        "_redirects",
        "serve.json",
        "app-config.js",  # replaced by our static/launcher/launch.js and the launch's data
        "index.html",  # kept outside static/: Django serves it per launch
    }
)
PRUNED_SUFFIXES = (".map",)

# Extensions worth precompressing; images and fonts are compressed already.
COMPRESSIBLE_SUFFIXES = (".js", ".css", ".json", ".wasm", ".svg", ".html", ".txt", ".xml", ".ico")

WEBPACK_PUBLIC_PATH = '__webpack_require__.p = "/"'

# OHIF's build loads each extension with `Promise.all([__webpack_require__.e(<chunk>), …])`
# from its app bundle; its default extension's chunks are requested first, as soon as the
# app bundle has run, on every load (docs/ohif.md, "What the viewer loads first").
FIRST_EXTENSION = "@ohif/extension-default"
_EXTENSION_IMPORT = re.compile(
    r'if \(module === "' + re.escape(FIRST_EXTENSION) + r'"\) \{\s*const imported = await '
    r"Promise\.all\(/\* import\(\) \*/ \[([^\]]*)\]\)"
)
_CHUNK_ID = re.compile(r"__webpack_require__\.e\((\d+)\)")
# Where a chunk's stylesheet is (the bundle's CSS loading runtime, mini-css-extract's):
# `<id>.css`, under the public path.
_CSS_FILENAME = re.compile(
    r"__webpack_require__\.miniCssF = \(chunkId\) => \{[^}]*?"
    r'return "" \+ chunkId \+ "\.css"\s*\}'
)
PRELOAD_MARK = "<!--kheops-ohif-preload-->"


class BundleError(Exception):
    """The OHIF bundle could not be installed; the message says why and what to do."""


class BundleDownloadError(BundleError):
    pass


class BundleIntegrityError(BundleError):
    pass


@dataclass(frozen=True)
class BundleSpec:
    package: str
    version: str
    integrity: str  # "sha512-<base64>", as the npm registry publishes it
    # Bumped (in ohif-bundle.json) when the install layout or the rewrite rules change: an
    # older install of the same version is then redone, and served under new URLs.
    install_format: int = 1

    @property
    def asset_directory(self) -> str:
        """The URL segment the bundle is served under: its files can be cached forever."""
        return f"{self.version}-{self.install_format}"

    @property
    def tarball_name(self) -> str:
        return f"{self.package.rsplit('/', 1)[-1]}-{self.version}.tgz"

    def tarball_url(self, registry_url: str) -> str:
        return f"{registry_url.rstrip('/')}/{self.package}/-/{self.tarball_name}"


@dataclass(frozen=True)
class InstalledBundle:
    path: Path
    version: str
    integrity: str
    asset_prefix: str
    install_format: int

    @property
    def static_dir(self) -> Path:
        return self.path / "static"

    @property
    def index_html(self) -> Path:
        return self.path / "index.html"

    def matches(self, spec: BundleSpec, asset_prefix: str) -> bool:
        return (
            self.version == spec.version
            and self.integrity == spec.integrity
            and self.asset_prefix == asset_prefix
            and self.install_format == spec.install_format
        )


@dataclass(frozen=True)
class InstallResult:
    bundle: InstalledBundle
    changed: bool
    downloaded: bool


def load_spec(path: Path) -> BundleSpec:
    data = json.loads(path.read_text())
    integrity = data["integrity"]
    if not integrity.startswith("sha512-"):
        raise BundleError(f"{path}: only sha512 integrity values are accepted, got {integrity!r}")
    return BundleSpec(
        package=data["package"],
        version=data["version"],
        integrity=integrity,
        install_format=int(data.get("install_format", 1)),
    )


def installed_bundle(root: Path) -> InstalledBundle | None:
    """The bundle `root/current` points at, or None when nothing (complete) is installed."""
    try:
        path = (Path(root) / "current").resolve(strict=True)
        data = json.loads((path / MARKER).read_text())
        return InstalledBundle(
            path=path,
            version=data["version"],
            integrity=data["integrity"],
            asset_prefix=data["asset_prefix"],
            install_format=data["install_format"],
        )
    except (OSError, ValueError, KeyError):
        return None


def install(
    spec: BundleSpec,
    *,
    root: Path,
    asset_prefix: str,
    registry_url: str,
    session: requests.Session,
    timeout: float = 30.0,
    force: bool = False,
    progress: bool = True,
    brotli_quality: int = 9,
    log: Callable[[str], None] = lambda message: None,
) -> InstallResult:
    """Install `spec` under `root` for assets served at `asset_prefix`; idempotent and atomic.

    Either the new bundle is complete and `current` points at it, or nothing changed.
    """
    if not (asset_prefix.startswith("/") and asset_prefix.endswith("/")):
        raise BundleError(f"The asset prefix must start and end with '/', got {asset_prefix!r}")
    root = Path(root)
    current = installed_bundle(root)
    if current is not None and current.matches(spec, asset_prefix) and not force:
        log(f"{spec.package} {spec.version} is already installed for {asset_prefix}")
        return InstallResult(bundle=current, changed=False, downloaded=False)

    root.mkdir(parents=True, exist_ok=True)
    tarball, downloaded = _verified_tarball(
        spec,
        root=root,
        registry_url=registry_url,
        session=session,
        timeout=timeout,
        progress=progress,
        log=log,
    )
    prefix_tag = hashlib.sha256(asset_prefix.encode()).hexdigest()[:8]
    final_dir = root / f"{spec.version}-{prefix_tag}"
    work_dir = Path(tempfile.mkdtemp(prefix=".installing-", dir=root))
    try:
        _prepare(
            spec,
            tarball,
            work_dir,
            asset_prefix=asset_prefix,
            brotli_quality=brotli_quality,
            log=log,
        )
        _put_in_place(root, work_dir, final_dir)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    _remove_stale_installs(root, keep={final_dir.name, current.path.name if current else ""})
    bundle = installed_bundle(root)
    assert bundle is not None
    log(f"Installed {spec.package} {spec.version} at {final_dir}")
    return InstallResult(bundle=bundle, changed=True, downloaded=downloaded)


def _prepare(
    spec: BundleSpec,
    tarball: Path,
    work_dir: Path,
    *,
    asset_prefix: str,
    brotli_quality: int,
    log: Callable[[str], None],
) -> None:
    """Unpack, prune, rewrite and precompress the bundle in `work_dir`, and mark it complete."""
    static_dir = work_dir / "static"
    log(f"Unpacking {spec.tarball_name} (pruning what a radiology viewer never loads)")
    _extract_dist(tarball, static_dir, index_target=work_dir / "index.html")
    log(f"Rewriting the asset prefix to {asset_prefix}")
    _rewrite_prefix(static_dir, work_dir / "index.html", asset_prefix)
    first = first_chunks(static_dir)
    log(f"Preloading the {len(first)} chunks of OHIF's default extension")
    index = work_dir / "index.html"
    index.write_text(add_preload_links(index.read_text(encoding="utf-8"), first, asset_prefix))
    log("Precompressing (brotli and gzip)")
    _precompress(static_dir, brotli_quality=brotli_quality)
    marker = {
        "package": spec.package,
        "version": spec.version,
        "integrity": spec.integrity,
        "asset_prefix": asset_prefix,
        "install_format": spec.install_format,
    }
    (work_dir / MARKER).write_text(json.dumps(marker, indent=2))
    work_dir.chmod(0o755)


def _put_in_place(root: Path, work_dir: Path, final_dir: Path) -> None:
    if final_dir.exists():
        # A same-named directory is an older install of this version and prefix: it is
        # not the one `current` points at when we get here (or `force` was given).
        trash = Path(tempfile.mkdtemp(prefix=".removing-", dir=root))
        final_dir.rename(trash / "old")
        _switch_current(root, work_dir, final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        _switch_current(root, work_dir, final_dir)


def _switch_current(root: Path, work_dir: Path, final_dir: Path) -> None:
    work_dir.rename(final_dir)
    link_tmp = root / f".current-{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    link_tmp.symlink_to(final_dir.name)
    os.replace(link_tmp, root / "current")


def _remove_stale_installs(root: Path, keep: set[str]) -> None:
    # Keep the previous bundle one generation: a process started before the switch may
    # still be serving files from it.
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink() and re.match(r"^\d", entry.name):
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith((".installing-", ".removing-")):
            shutil.rmtree(entry, ignore_errors=True)


def _integrity_of(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _verified_tarball(
    spec: BundleSpec,
    *,
    root: Path,
    registry_url: str,
    session: requests.Session,
    timeout: float,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[Path, bool]:
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / spec.tarball_name
    if target.exists():
        if _integrity_of(target) == spec.integrity:
            log(f"Using the verified download {target}")
            return target, False
        target.unlink()
    url = spec.tarball_url(registry_url)
    log(f"Downloading {spec.package} {spec.version} from {url}")
    fd, partial_name = tempfile.mkstemp(prefix=".partial-", suffix=".tgz", dir=downloads)
    partial = Path(partial_name)
    digest = hashlib.sha512()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with session.get(url, stream=True, timeout=timeout) as response:
                    if response.status_code != 200:
                        raise BundleDownloadError(
                            f"Could not download {spec.package} {spec.version}: {url} answered "
                            f"HTTP {response.status_code}. Check NPM_REGISTRY_URL and the network."
                        )
                    total = int(response.headers.get("Content-Length") or 0) or None
                    for chunk in _progress(response.iter_content(1 << 16), total, progress):
                        digest.update(chunk)
                        out.write(chunk)
            except requests.RequestException as exc:
                raise BundleDownloadError(
                    f"Could not download {spec.package} {spec.version} from {url}: "
                    f"{type(exc).__name__}: {exc}. Check the network or NPM_REGISTRY_URL."
                ) from None
        actual = "sha512-" + base64.b64encode(digest.digest()).decode()
        if actual != spec.integrity:
            raise BundleIntegrityError(
                f"Integrity mismatch for {spec.package} {spec.version} downloaded from {url}: "
                f"expected {spec.integrity}, got {actual}. Nothing was installed. If the pinned "
                f"value in ohif-bundle.json is right, the download was tampered with or corrupted."
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target, True


def _progress(chunks: Iterator[bytes], total: int | None, enabled: bool) -> Iterator[bytes]:
    from tqdm import tqdm

    # disable=None hides the bar when stderr is not a terminal (CI logs).
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="@ohif/app",
        disable=None if enabled else True,
    ) as bar:
        for chunk in chunks:
            bar.update(len(chunk))
            yield chunk


def _is_pruned(relative: str) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return (
        relative.startswith(PRUNED_DIRS)
        or (relative in PRUNED_FILES)
        or name.endswith(PRUNED_SUFFIXES)
    )


def _extract_dist(tarball: Path, static_dir: Path, *, index_target: Path) -> None:
    static_dir.mkdir(parents=True)
    found_index = False
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            path = PurePosixPath(member.name)
            if path.parts[:2] != ("package", "dist") or len(path.parts) < 3:
                continue
            relative = "/".join(path.parts[2:])
            if member.isdir() or (_is_pruned(relative) and relative != "index.html"):
                continue
            if not member.isfile() or ".." in path.parts:
                continue  # links, devices and path tricks have no place in a static bundle
            destination = index_target if relative == "index.html" else static_dir / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            with source, destination.open("wb") as out:
                shutil.copyfileobj(source, out)
            destination.chmod(0o644)
            found_index = found_index or relative == "index.html"
    if not found_index:
        raise BundleError(f"{tarball.name} has no package/dist/index.html: not an OHIF app build")


def _rewrite_prefix(static_dir: Path, index_html: Path, prefix: str) -> None:
    js_rewritten = 0
    for path in static_dir.glob("*.js"):
        text = path.read_text(encoding="utf-8")
        if WEBPACK_PUBLIC_PATH in text:
            path.write_text(
                text.replace(WEBPACK_PUBLIC_PATH, f'__webpack_require__.p = "{prefix}"'),
                encoding="utf-8",
            )
            js_rewritten += 1
    if js_rewritten == 0:
        raise BundleError(
            "No webpack public path literal found in the bundle: this OHIF build is not laid "
            "out as expected and cannot be served under a prefix (see docs/ohif.md)."
        )
    for path in static_dir.glob("*.css"):
        text = path.read_text(encoding="utf-8")
        path.write_text(re.sub(r"url\(/(?!/)", f"url({prefix}", text), encoding="utf-8")
    manifest = static_dir / "manifest.json"
    if manifest.exists():
        text = manifest.read_text(encoding="utf-8")
        manifest.write_text(text.replace('"/assets/', f'"{prefix}assets/'), encoding="utf-8")
    index_html.write_text(rewrite_index_html(index_html.read_text(encoding="utf-8"), prefix))


def rewrite_index_html(html: str, prefix: str) -> str:
    """OHIF's index.html with its assets under `prefix` and no inline script left.

    The two inline scripts (`window.PUBLIC_URL`, `browserImportFunction`) move into our
    static/launcher/launch.js so that the page runs under `script-src 'self'` plus eval; the
    app-config.js script becomes a placeholder the viewer view fills per launch (viewer.py).
    """
    html = re.sub(r"<script>(?:(?!</script>).)*</script>", "", html, flags=re.S)
    html = html.replace('src="/app-config.js"', f'src="{APP_CONFIG_PLACEHOLDER}"')
    html = re.sub(r'(\s(?:href|src|content))="/(?!/)', rf'\1="{prefix}', html)
    if APP_CONFIG_PLACEHOLDER not in html:
        raise BundleError("index.html does not load /app-config.js: unexpected OHIF build")
    return html


def _first_chunk_ids(static_dir: Path) -> tuple[str, list[str]]:
    """The app bundle's text and the ids of the chunks it imports OHIF's default extension
    from, in its order; no ids when the bundle is not laid out so."""
    bundles = sorted(static_dir.glob("app.bundle.*.js"))
    if len(bundles) != 1:
        return "", []
    text = bundles[0].read_text(encoding="utf-8")
    found = _EXTENSION_IMPORT.search(text)
    if found is None:
        return text, []
    return text, list(dict.fromkeys(_CHUNK_ID.findall(found.group(1))))


def first_chunks(static_dir: Path) -> list[str]:
    """The script files of the chunks the app bundle imports OHIF's default extension from
    (in the bundle's order): OHIF requests them right after its app bundle has run, on
    every load. Empty when the bundle is not laid out so (nothing is then preloaded)."""
    files = []
    for chunk in _first_chunk_ids(static_dir)[1]:
        # A chunk with styles only has no script file; each script chunk has exactly one.
        named = sorted(static_dir.glob(f"{chunk}.bundle.*.js"))
        if len(named) == 1 and re.fullmatch(rf"{chunk}\.bundle\.[0-9a-f]+\.js", named[0].name):
            files.append(named[0].name)
    return files


def first_stylesheets(static_dir: Path) -> list[str]:
    """The stylesheet files of those same chunks (`6214.css` alone in 3.13.2). OHIF's CSS
    loader adds a chunk's `<link rel="stylesheet">` only once the app bundle has run, and
    waits for it before registering the extension, unless the page already has a stylesheet
    link of the same href (the public path and the file): the viewer page links them itself
    (launcher.viewer). Empty when the bundle does not name its stylesheets `<id>.css`."""
    text, chunks = _first_chunk_ids(static_dir)
    if not chunks or _CSS_FILENAME.search(text) is None:
        return []
    return [f"{chunk}.css" for chunk in chunks if (static_dir / f"{chunk}.css").is_file()]


def add_preload_links(html: str, files: list[str], prefix: str) -> str:
    """index.html with `<link rel="preload" as="script">` for `files` (under `prefix`) at the
    end of its head: fetched while the app bundle downloads and compiles, instead of after
    it ran. Classic scripts, as webpack's loader adds them (no `crossorigin`), so the
    browser reuses what it preloaded."""
    links = "".join(f'<link rel="preload" as="script" href="{prefix}{name}">' for name in files)
    return html.replace("</head>", PRELOAD_MARK + links + "</head>", 1)


def _compress_file(args: tuple[str, int]) -> int:
    path_name, quality = args
    path = Path(path_name)
    data = path.read_bytes()
    written = 0
    stat = path.stat()
    for suffix, compressed in (
        (".br", brotli.compress(data, quality=quality)),
        (".gz", gzip.compress(data, compresslevel=9, mtime=0)),
    ):
        # Same rule as WhiteNoise's compressor: keep only what saves at least 5 %.
        if len(compressed) <= 0.95 * len(data):
            out = path.with_name(path.name + suffix)
            out.write_bytes(compressed)
            os.utime(out, (stat.st_atime, stat.st_mtime))
            written += 1
    return written


def _precompress(static_dir: Path, *, brotli_quality: int) -> None:
    files = [
        (str(p), brotli_quality)
        for p in static_dir.rglob("*")
        if p.is_file() and p.suffix in COMPRESSIBLE_SUFFIXES and p.stat().st_size > 512
    ]
    # Largest first so the 17 MB app bundle does not end up alone at the tail.
    files.sort(key=lambda item: os.path.getsize(item[0]), reverse=True)
    workers = max(1, min(len(files), os.cpu_count() or 1))
    if workers == 1:
        for item in files:
            _compress_file(item)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_compress_file, files, chunksize=1))

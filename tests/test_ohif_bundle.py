"""Installing the OHIF bundle: integrity, pruning, prefix rewrite, atomicity, idempotence.

A small tarball shaped like `@ohif/app`'s is served at a fake registry; no network.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest
import requests
import responses

from launcher import ohif_bundle

REGISTRY = "https://registry.test"
INDEX_HTML = (
    '<!doctype html><html><head><meta name="msapplication-config" content="/assets/browserconfig.xml">'
    '<script>console.time("scriptToView"),window.PUBLIC_URL="/"</script>'
    '<link rel="manifest" href="/manifest.json"><link rel="icon" href="/assets/favicon.ico">'
    '<script rel="preload" as="script" src="/app-config.js"></script>'
    '<script>function browserImportFunction(n){return import(n)}window.PUBLIC_URL="/"</script>'
    '<script defer src="/app.bundle.0f6159c501addfe9.js"></script><link href="/app.bundle.css" rel="stylesheet">'
    '</head><body><div id="root"></div></body></html>'
)
FILES = {
    "index.html": INDEX_HTML,
    "app.bundle.0f6159c501addfe9.js": 'var x=1;__webpack_require__.p = "/";'
    + "/* padding */" * 200,
    "8097.bundle.8ae6404ba94890a0.js": 'self.x=1;__webpack_require__.p = "/";',
    "app.bundle.css": "@font-face{src:url(/a34f9d1faa5f3315.woff2)}body{background:url(//cdn.example/x.png)}"
    * 20,
    "manifest.json": json.dumps({"icons": [{"src": "/assets/android-chrome-36x36.png"}]}),
    "a34f9d1faa5f3315.woff2": "font",
    "0ddf166f7a343eda.wasm": "\0asm" + "w" * 2000,
    "app-config.js": "window.config={}",
    "sw.js": "sw",
    "serve.json": "{}",
    "app.bundle.0f6159c501addfe9.js.map": "{}",
    "ort/ort-wasm.wasm": "big",
    "dicom-microscopy-viewer/x.js": "micro",
    "assets/favicon.ico": "ico",
}


def make_tarball(files: dict[str, str] = FILES) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


TARBALL = make_tarball()
SPEC = ohif_bundle.BundleSpec(package="@ohif/app", version="3.13.2", integrity=integrity(TARBALL))
TARBALL_URL = f"{REGISTRY}/@ohif/app/-/app-3.13.2.tgz"


@pytest.fixture
def registry(rsps: responses.RequestsMock) -> responses.RequestsMock:
    rsps.get(TARBALL_URL, body=TARBALL, headers={"Content-Length": str(len(TARBALL))})
    return rsps


def install(
    root: Path, prefix: str = "/static/ohif/", spec: ohif_bundle.BundleSpec = SPEC, **kwargs
) -> ohif_bundle.InstallResult:
    with requests.Session() as session:
        return ohif_bundle.install(
            spec,
            root=root,
            asset_prefix=prefix,
            registry_url=REGISTRY,
            session=session,
            progress=False,
            **kwargs,
        )


def test_it_installs_a_pruned_bundle(tmp_path: Path, registry: responses.RequestsMock) -> None:
    result = install(tmp_path)

    assert result.changed and result.downloaded
    static = result.bundle.static_dir
    names = {p.relative_to(static).as_posix() for p in static.rglob("*") if p.is_file()}
    assert "app.bundle.0f6159c501addfe9.js" in names
    assert "0ddf166f7a343eda.wasm" in names
    assert "assets/favicon.ico" in names
    for pruned in (
        "sw.js",
        "serve.json",
        "app-config.js",
        "index.html",
        "app.bundle.0f6159c501addfe9.js.map",
    ):
        assert pruned not in names
    assert not any(name.startswith(("ort/", "dicom-microscopy-viewer/")) for name in names)
    assert ohif_bundle.installed_bundle(tmp_path) == result.bundle


def test_it_rewrites_the_asset_prefix_under_a_sub_path(
    tmp_path: Path, registry: responses.RequestsMock
) -> None:
    prefix = "/hospital/viewer/static/ohif/"
    bundle = install(tmp_path, prefix).bundle

    static = bundle.static_dir
    for js in ("app.bundle.0f6159c501addfe9.js", "8097.bundle.8ae6404ba94890a0.js"):
        text = (static / js).read_text()
        assert f'__webpack_require__.p = "{prefix}"' in text
        assert '__webpack_require__.p = "/"' not in text
    css = (static / "app.bundle.css").read_text()
    assert f"url({prefix}a34f9d1faa5f3315.woff2)" in css
    assert "url(//cdn.example/x.png)" in css  # protocol-relative URLs are not ours to touch
    assert (
        json.loads((static / "manifest.json").read_text())["icons"][0]["src"]
        == f"{prefix}assets/android-chrome-36x36.png"
    )
    index = bundle.index_html.read_text()
    assert f'src="{prefix}app.bundle.0f6159c501addfe9.js"' in index
    assert f'href="{prefix}app.bundle.css"' in index
    assert f'content="{prefix}assets/browserconfig.xml"' in index
    assert f'src="{ohif_bundle.APP_CONFIG_PLACEHOLDER}"' in index
    assert "window.PUBLIC_URL" not in index  # inline scripts moved into app-config.js
    assert '="/' not in index.replace(f'="{prefix}', "")


# The shape of OHIF's generated extension loader in its app bundle (3.13).
LOADER = """
async function loadModule(module) {
  if (typeof module !== 'string') return module;
  if (module === "@ohif/extension-default") {
    const imported = await Promise.all(/* import() */ [__webpack_require__.e(1673), __webpack_require__.e(6938), __webpack_require__.e(6214), __webpack_require__.e(89)]).then(__webpack_require__.bind(__webpack_require__, 50904));
    return imported.default;
  }
  if (module === "@ohif/extension-cornerstone") {
    const imported = await Promise.all(/* import() */ [__webpack_require__.e(1673), __webpack_require__.e(9383)]).then(__webpack_require__.bind(__webpack_require__, 75609));
    return imported.default;
  }
}
"""


def test_it_preloads_the_chunks_ohif_loads_first(
    tmp_path: Path, rsps: responses.RequestsMock
) -> None:
    files = {
        **FILES,
        "app.bundle.0f6159c501addfe9.js": FILES["app.bundle.0f6159c501addfe9.js"] + LOADER,
        "1673.bundle.76779c7722e8c6c0.js": "a",
        "6938.bundle.34415aaeea5935b3.js": "b",
        "6214.css": "c{}",  # a chunk of styles only: no script to preload
        "89.bundle.b327bf3664812958.js": "d",
        "9383.bundle.40008913697b48b8.js": "e",  # another extension's: not preloaded
    }
    tarball = make_tarball(files)
    rsps.get(TARBALL_URL, body=tarball)
    spec = ohif_bundle.BundleSpec(
        package="@ohif/app", version="3.13.2", integrity=integrity(tarball)
    )
    prefix = "/static/ohif/3.13.2-2/"

    index = install(tmp_path, prefix, spec=spec).bundle.index_html.read_text()

    preloaded = re.findall(r'<link rel="preload" as="script" href="([^"]*)">', index)
    assert preloaded == [
        f"{prefix}1673.bundle.76779c7722e8c6c0.js",
        f"{prefix}6938.bundle.34415aaeea5935b3.js",
        f"{prefix}89.bundle.b327bf3664812958.js",
    ]
    # After the app bundle's script (requested first), in the head; no crossorigin
    # attribute: webpack adds its chunks as plain scripts, which must match the preloads.
    head = index[: index.index("</head>")]
    assert head.index("app.bundle.0f6159c501addfe9.js") < head.index(preloaded[0])


# The bundle's CSS loading runtime (3.13): where a chunk's stylesheet is.
CSS_RUNTIME = """
__webpack_require__.miniCssF = (chunkId) => {
  // return url for filenames not based on template
  // return url for filenames based on template
  return "" + chunkId + ".css"
}
"""


def test_it_finds_the_stylesheet_of_the_chunks_ohif_loads_first_and_leaves_index_html_alone(
    tmp_path: Path,
) -> None:
    static = tmp_path / "static"
    static.mkdir()
    files = {
        "app.bundle.0f6159c501addfe9.js": LOADER + CSS_RUNTIME,
        "1673.bundle.76779c7722e8c6c0.js": "a",
        "1673.css": "a{}",  # a script chunk may have styles too
        "6214.css": "c{}",
        "9383.css": "e{}",  # another extension's: not linked
    }
    for name, text in files.items():
        (static / name).write_text(text)

    assert ohif_bundle.first_stylesheets(static) == ["1673.css", "6214.css"]
    # Stylesheets not named `<id>.css` by the bundle: none (its loader would not know ours).
    (static / "app.bundle.0f6159c501addfe9.js").write_text(
        LOADER + CSS_RUNTIME.replace('chunkId + ".css"', 'chunkId + "." + hash + ".css"')
    )
    assert ohif_bundle.first_stylesheets(static) == []
    (static / "app.bundle.0f6159c501addfe9.js").write_text(CSS_RUNTIME)
    assert ohif_bundle.first_stylesheets(static) == []


def test_a_bundle_of_another_shape_is_installed_without_preloads(
    tmp_path: Path, registry: responses.RequestsMock
) -> None:
    index = install(tmp_path).bundle.index_html.read_text()

    assert 'rel="preload"' not in index.replace('<script rel="preload"', "")


def test_it_precompresses_for_whitenoise(tmp_path: Path, registry: responses.RequestsMock) -> None:
    static = install(tmp_path).bundle.static_dir

    assert (static / "app.bundle.0f6159c501addfe9.js.br").exists()
    assert (static / "app.bundle.0f6159c501addfe9.js.gz").exists()
    assert (static / "0ddf166f7a343eda.wasm.br").exists()
    assert not (static / "a34f9d1faa5f3315.woff2.br").exists()


def test_a_second_install_is_a_no_op(tmp_path: Path, registry: responses.RequestsMock) -> None:
    first = install(tmp_path)
    calls = len(registry.calls)

    second = install(tmp_path)

    assert not second.changed
    assert second.bundle == first.bundle
    assert len(registry.calls) == calls


def test_a_new_prefix_reinstalls_from_the_verified_download(
    tmp_path: Path, registry: responses.RequestsMock
) -> None:
    first = install(tmp_path, "/static/ohif/")

    second = install(tmp_path, "/sub/static/ohif/")

    assert second.changed and not second.downloaded
    assert len(registry.calls) == 1
    assert second.bundle.asset_prefix == "/sub/static/ohif/"
    assert (tmp_path / "current").resolve() == second.bundle.path
    assert first.bundle.path.exists()  # the previous generation stays for running processes


def test_an_integrity_mismatch_installs_nothing(
    tmp_path: Path, registry: responses.RequestsMock
) -> None:
    wrong = ohif_bundle.BundleSpec(
        package="@ohif/app", version="3.13.2", integrity=integrity(b"something else")
    )

    with pytest.raises(
        ohif_bundle.BundleIntegrityError, match=r"Integrity mismatch.*Nothing was installed"
    ):
        install(tmp_path, spec=wrong)

    assert ohif_bundle.installed_bundle(tmp_path) is None
    assert not (tmp_path / "current").exists()
    assert list((tmp_path / "downloads").iterdir()) == []


def test_an_integrity_mismatch_keeps_the_installed_bundle(
    tmp_path: Path, registry: responses.RequestsMock
) -> None:
    good = install(tmp_path).bundle
    wrong = ohif_bundle.BundleSpec(
        package="@ohif/app", version="3.13.2", integrity=integrity(b"other")
    )
    (tmp_path / "downloads" / SPEC.tarball_name).unlink()

    with pytest.raises(ohif_bundle.BundleIntegrityError):
        install(tmp_path, spec=wrong)

    assert ohif_bundle.installed_bundle(tmp_path) == good


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (requests.ConnectionError("no route"), "Could not download @ohif/app 3.13.2 from"),
        (requests.ReadTimeout("slow"), "ReadTimeout"),
    ],
)
def test_a_network_error_is_a_clear_message(
    tmp_path: Path, rsps: responses.RequestsMock, failure: Exception, message: str
) -> None:
    rsps.get(TARBALL_URL, body=failure)

    with pytest.raises(ohif_bundle.BundleDownloadError, match=message):
        install(tmp_path)
    assert ohif_bundle.installed_bundle(tmp_path) is None


def test_an_http_error_is_a_clear_message(tmp_path: Path, rsps: responses.RequestsMock) -> None:
    rsps.get(TARBALL_URL, status=404)

    with pytest.raises(ohif_bundle.BundleDownloadError, match="answered HTTP 404"):
        install(tmp_path)


def test_a_failure_half_way_leaves_no_half_installed_bundle(
    tmp_path: Path, registry: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = install(tmp_path).bundle

    def explode(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ohif_bundle, "_precompress", explode)
    with pytest.raises(OSError, match="disk full"):
        install(tmp_path, "/other/static/ohif/")

    assert ohif_bundle.installed_bundle(tmp_path) == good
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".installing-")]


def test_a_tarball_that_is_not_an_ohif_build_is_refused(
    tmp_path: Path, rsps: responses.RequestsMock
) -> None:
    data = make_tarball({"README.md": "hello"})
    rsps.get(TARBALL_URL, body=data)
    spec = ohif_bundle.BundleSpec(package="@ohif/app", version="3.13.2", integrity=integrity(data))

    with pytest.raises(ohif_bundle.BundleError, match="not an OHIF app build"):
        install(tmp_path, spec=spec)
    assert ohif_bundle.installed_bundle(tmp_path) is None


def test_path_tricks_in_the_tarball_are_ignored(
    tmp_path: Path, rsps: responses.RequestsMock
) -> None:
    data = make_tarball({**FILES, "../../escape.js": "x"})
    rsps.get(TARBALL_URL, body=data)
    spec = ohif_bundle.BundleSpec(package="@ohif/app", version="3.13.2", integrity=integrity(data))

    install(tmp_path / "root", spec=spec)

    assert not list(tmp_path.rglob("escape.js"))
    assert ohif_bundle.installed_bundle(tmp_path / "root") is not None  # the rest installed


def test_the_pinned_spec_is_the_one_in_the_repository() -> None:
    spec = ohif_bundle.load_spec(Path(__file__).resolve().parent.parent / "ohif-bundle.json")

    assert spec.package == "@ohif/app"
    assert spec.integrity.startswith("sha512-")
    assert (
        spec.tarball_url("https://registry.npmjs.org")
        == f"https://registry.npmjs.org/@ohif/app/-/app-{spec.version}.tgz"
    )

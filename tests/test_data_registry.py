"""Dataset registry, checked downloads and readers, offline.

A loopback HTTP server serves tiny replicas of every registry dataset, built in the layout of the
real archives; the registry is pointed at it through the mirror variable (CTE_KIT_MIRROR), with the
replicas' checksums in place of the real ones.
"""

import hashlib
import io
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import yaml

from cte_kit.data import registry as reg
from cte_kit.data.readers import ArchiveLayoutError, Sample, to_patches

ROOT = Path(__file__).resolve().parents[1]
REAL_REGISTRY = ROOT / "data_registry.yaml"


# ----------------------------------------------------------------------------- synthetic content


def _discs(shape, centres, radius=5, ids=None):
    """uint16 label image with one disc per centre (ids 1, 2, ... unless given)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    for i, (y, x) in enumerate(centres):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = ids[i] if ids else i + 1
    return labels


def _image(labels, dtype=np.uint8):
    rng = np.random.default_rng(int(labels.sum()) % 2**32)
    return ((labels > 0) * 150 + rng.integers(0, 50, labels.shape)).astype(dtype)


def _tif(array):
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def _png(array):
    return iio.imwrite("<bytes>", array, extension=".png")


def _h5(**arrays):
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        for key, value in arrays.items():
            handle.create_dataset(key, data=value)
    return buffer.getvalue()


def _npz(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _zip(path: Path, members: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


# ----------------------------------------------------------------------------- replicas of the real layouts
# Each builder writes the dataset's files, named as in the registry, into a folder; the number is how
# many 2D images load_dataset must return for the default split.

BBBC039_STEMS = ["IXMtest_A02_s1_w1051DAA7C", "IXMtest_A02_s3_w1051DAA7C", "IXMtest_B12_s2_w19F7E0279",
                 "IXMtest_C11_s5_w1E1F19A72"]


def bbbc039(folder):
    labels = _discs((48, 64), [(12, 12), (30, 44)], ids=[1, 1])  # one value, two components
    rgba = np.stack([labels * 255, labels * 0, labels * 0, np.full_like(labels, 255)], axis=-1).astype(np.uint8)
    _zip(folder / "images.zip", {f"images/{s}.tif": _tif(_image(labels, np.uint16)) for s in BBBC039_STEMS})
    masks = {f"masks/{s}.png": _png(rgba) for s in BBBC039_STEMS}
    masks |= {f"__MACOSX/masks/._{s}.png": b"\x00\x05\x16\x07" for s in BBBC039_STEMS}
    _zip(folder / "masks.zip", masks)
    lists = {"training": BBBC039_STEMS[:2], "validation": BBBC039_STEMS[2:3], "test": BBBC039_STEMS[3:]}
    _zip(folder / "metadata.zip", {f"metadata/{k}.txt": "".join(f"{s}.png\n" for s in v) for k, v in lists.items()})


def dsb2018(folder):
    labels = _discs((64, 64), [(20, 20), (40, 45)])
    members = {}
    for split, stems in {"train": ["a1", "b2"], "test": ["c3"]}.items():
        for stem in stems:
            members[f"dsb2018/{split}/images/{stem}.tif"] = _tif(_image(labels))
            members[f"dsb2018/{split}/masks/{stem}.tif"] = _tif(labels)
    _zip(folder / "dsb2018.zip", members)


def hoechst(folder):
    labels = _discs((40, 50), [(10, 10), (28, 38), (10, 40)])
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 200, 0], [255, 0, 0]], np.uint8)  # objects 1 and 3 share red
    for archive in ("training_nuclei", "development_nuclei", "test_nuclei"):
        _zip(folder / f"{archive}.zip", {f"{archive}/images/img_01.png": _png(_image(labels)),
                                         f"{archive}/annotations/img_01.png": _png(colours[labels])})


def s_biad634(folder):
    labels = _discs((32, 32), [(16, 16)])
    members = {}
    for stem in ("normal_1", "normal_2", "tumor_1"):
        members[f"rawimages/{stem}.tif"] = _tif(_image(labels, np.uint16))
        members[f"groundtruth/{stem}.tif"] = _tif(labels)
    _zip(folder / "dataset.zip", members)


S_BIAD895_INVALID = "cell migration R1 - Position 0_XY1562686096_Z0_T00_C1-1-image7"


def s_biad895(folder):
    labels = _discs((40, 40), [(20, 20)])
    stems = {"Training": [S_BIAD895_INVALID, "cell migration R1 - Position 0_XY1562686096_Z0_T00_C1-1-image1",
                          "cell migration R1 - Position 0_XY1562686096_Z0_T00_C1-1-image2"],
             "Test": ["cell migration R1 - Position 5_XY1562686200_Z0_T00_C1-1-image1"]}
    members = {}
    for split, names in stems.items():
        for stem in names:
            members[f"Stardist/{split} - Images/{stem}.tif"] = _tif(_image(labels))
            members[f"Stardist/{split} - Masks/{stem}.tif"] = _tif(labels)
    _zip(folder / "Stardist_v2.zip", members)


def epfl(folder):
    # 300x300 slices give one 256x256 patch each; slice 2 has foreground only in the dropped remainder.
    members = {}
    for split in ("Train", "Test"):
        for z, centre in enumerate([(100, 100), (200, 60), (285, 285)]):
            mask = _discs((300, 300), [centre], radius=10) > 0
            rgba = np.where(mask[..., None], 255, np.array([0, 0, 0, 255])).astype(np.uint8)
            members[f"Lucchi++/{split}_In/mask{z:04d}.png"] = _png(_image(mask))
            members[f"Lucchi++/{split}_Out/{z}.png"] = _png(rgba)
    _zip(folder / "lucchi_pp.zip", members)


def _mitoem(letter):
    def build(folder):
        labels = _discs((256, 256), [(60, 60), (180, 180)], radius=20)
        labelled = {349: "train", 350: "train", 399: "train", 400: "val", 401: "val"}
        _zip(folder / f"EM30-{letter}-im.zip", {f"im/im{z:04d}.png": _png(_image(labels)) for z in [*labelled, 600]})
        _zip(folder / f"EM30-{letter}-mito-train-val-v2.zip",
             {f"mito-{part}-v2/seg{z:04d}.tif": _tif(labels) for z, part in labelled.items()})
    return build


def vnc(folder):
    # 512x512 slices, 4 patches each; anti-aliased masks: 100 is below the 127 threshold.
    root = "groundtruth-drosophila-vnc-master"
    members = {f"{root}/stack2/raw/00.tif": _tif(np.zeros((512, 512), np.uint8))}
    for z in range(3):
        mask = (_discs((512, 512), [(100, 100), (100, 400)], radius=12) > 0).astype(np.uint8) * 255
        mask[300:310, 300:310] = 100
        if z == 2:
            mask[mask == 255] = 0  # only faint pixels: no foreground
        members[f"{root}/stack1/raw/{z:02d}.tif"] = _tif(_image(mask))
        members[f"{root}/stack1/mitochondria/{z:02d}.png"] = _png(mask)
    _zip(folder / "groundtruth-drosophila-vnc-master.zip", members)


def flywing(folder):
    labels = np.stack([_discs((64, 64), [(20, 20), (44, 44)]), np.zeros((64, 64), np.uint16)])
    images = _image(labels).astype(np.float32)
    _zip(folder / "Flywing_n0.zip", {
        "Flywing_n0/train/train_data.npz": _npz(X_train=images, Y_train=labels, X_val=images, Y_val=labels),
        "Flywing_n0/test/test_data.npz": _npz(X_test=images, Y_test=labels),
    })


def ovules(folder):
    labels = np.stack([_discs((300, 260), [(80, 80), (150, 200)], radius=30), np.zeros((300, 260), np.uint16)])
    for split in ("train", "val", "test"):
        _zip(folder / f"ovules_{split}.zip", {"N_404_ds2x.h5": _h5(raw=_image(labels), label=labels)})


def pnas(folder):
    volume = np.stack([_discs((256, 256), [(100, 100)], radius=40)] * 2)
    members = {}
    for plant, hours in {"plant1": [0, 4], "plant2": [0, 4, 8], "plant4": [0]}.items():
        for h in hours:
            stem = f"{h}hrs_{plant}_trim-acylYFP"
            members[f"PNAS/{plant}/processed_tiffs/{stem}.tif"] = _tif(_image(volume))
            if plant != "plant4":  # a time point without segmentation is skipped
                members[f"PNAS/{plant}/segmentation_tiffs/{stem}_hmin_2_asf_1_s_2.00_clean_3.tif"] = _tif(volume)
    _zip(folder / "PNAS.zip", members)


def hela_cytonuc(folder):
    labels = _discs((48, 48), [(24, 24)])
    rgb = np.stack([_image(labels), np.zeros_like(labels, np.uint8), _image(labels)], axis=-1)
    for archive in ("train", "validation", "test"):
        _zip(folder / f"HeLaCytoNuc_{archive}.zip", {"images/hela_0001.tif": _tif(rgb),
                                                      "nuclei_masks/hela_0001.tif": _tif(labels),
                                                      "cytoplasm_masks/hela_0001.tif": _tif(labels)})


REPLICAS = {
    "bbbc039": (bbbc039, 1),
    "dsb2018": (dsb2018, 1),
    "hoechst": (hoechst, 1),
    "s_biad634": (s_biad634, 3),
    "s_biad895": (s_biad895, 2),
    "epfl": (epfl, 2),
    "mitoem_human": (_mitoem("H"), 4),
    "mitoem_rat": (_mitoem("R"), 4),
    "vnc": (vnc, 4),
    "flywing": (flywing, 1),
    "ovules": (ovules, 1),
    "pnas": (pnas, 2),
    "hela_cytonuc": (hela_cytonuc, 1),
}


def dsb2018_changed(folder):
    """dsb2018 as if the host had renamed a folder."""
    labels = _discs((64, 64), [(20, 20)])
    _zip(folder / "dsb2018.zip", {"dsb2018/testing/images/c3.tif": _tif(_image(labels)),
                                  "dsb2018/testing/masks/c3.tif": _tif(labels)})


# ----------------------------------------------------------------------------- loopback server


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        site = self.server.site
        site.requests.append(self.path)
        path = site.root / unquote(self.path.lstrip("/"))
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        if self.path in site.corrupt:
            body = body[: len(body) // 2]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class LoopbackSite:
    """Serves a folder on 127.0.0.1, records request paths, can serve chosen files truncated."""

    def __init__(self, root: Path):
        self.root, self.requests, self.corrupt = root, [], set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.site = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _sha256(path):
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """All replicas served over loopback, and a registry with their checksums (CTE_KIT_REGISTRY)."""
    served = tmp_path_factory.mktemp("served")
    builders = {name: builder for name, (builder, _) in REPLICAS.items()} | {"dsb2018_changed": dsb2018_changed}
    for name, builder in builders.items():
        builder(served / name)
    raw = yaml.safe_load(REAL_REGISTRY.read_text())
    changed = dict(next(d for d in raw["datasets"] if d["name"] == "dsb2018"), name="dsb2018_changed")
    for entry in [*raw["datasets"], changed]:
        # a null hash stays null: those downloads are exercised unverified, as they are for real
        entry["files"] = [dict(f, hash=f["hash"] and _sha256(served / entry["name"] / f["fname"]))
                          for f in entry["files"]]
    raw["datasets"].append(changed)
    registry = served / "test_registry.yaml"
    registry.write_text(yaml.safe_dump(raw, sort_keys=False))
    loopback = LoopbackSite(served)
    loopback.registry = registry
    yield loopback
    loopback.close()


@pytest.fixture
def env(site, tmp_path, monkeypatch):
    """Fresh cache, the replica registry, and the mirror pointing at the loopback site."""
    monkeypatch.setenv(reg.REGISTRY_ENV, str(site.registry))
    monkeypatch.setenv(reg.MIRROR_ENV, site.url)
    monkeypatch.setenv(reg.DATA_DIR_ENV, str(tmp_path / "cache"))
    site.requests.clear()
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- the real registry


def test_registry_lists_the_papers_datasets_with_sourced_files():
    registry = reg.read_registry(REAL_REGISTRY)
    assert len(registry) >= 10
    assert {"bbbc039", "dsb2018", "hoechst", "s_biad634", "s_biad895", "epfl", "mitoem_human", "mitoem_rat",
            "vnc", "flywing", "ovules", "pnas"} <= set(registry)
    for entry in registry.values():
        assert entry.citation and entry.landing_page.startswith("http") and entry.files
        for data_file in entry.files:
            assert data_file.url.startswith(("https://", "http://")) and data_file.source
            # read_registry already refuses a null hash without a note saying why
            assert data_file.hash is None or data_file.hash.startswith("sha256:")


def test_every_dataset_has_a_replica_in_these_tests():
    assert set(REPLICAS) == set(reg.read_registry(REAL_REGISTRY))


def test_packaged_registry_is_a_copy_of_the_top_level_one():
    assert (ROOT / "cte_kit" / "assets" / "data_registry.yaml").read_bytes() == REAL_REGISTRY.read_bytes()


def test_default_registry_is_the_packaged_copy(monkeypatch):
    monkeypatch.delenv(reg.REGISTRY_ENV, raising=False)
    assert list(reg.read_registry()) == list(reg.read_registry(REAL_REGISTRY))


def test_format_table_lists_names_sizes_licences_and_checksum_status(monkeypatch, tmp_path):
    monkeypatch.setenv(reg.DATA_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(reg.MIRROR_ENV, raising=False)
    entries = list(reg.read_registry(REAL_REGISTRY).values())
    table = reg.format_table(entries)
    for entry in entries:
        assert entry.name in table
    assert "80.7" in table  # BBBC039: the only dataset whose sizes are published
    assert "CC0 1.0" in table and "CC BY-NC-SA 3.0" in table
    ovules = next(line for line in table.splitlines() if line.startswith("ovules"))
    assert ovules.endswith("none")
    assert str(tmp_path) in table
    # a terminal's and a notebook's width: long modalities lose their details in brackets, short ones keep them
    assert max(len(line) for line in table.splitlines() if str(tmp_path) not in line) <= 100
    assert "fluorescence (widefield)" in table


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(colour="red"), "unknown key"),
    (lambda d: d.pop("licence"), "missing key"),
    (lambda d: d["files"][0].update(hash="sha256:1234"), "hash must look like"),
    (lambda d: d["files"][0].update(hash=None), "must say why"),
    (lambda d: d.update(reader="magic"), "unknown reader"),
    (lambda d: d.update(task="detection"), "task must be one of"),
    (lambda d: d.update(default_split="holdout"), "default_split"),
])
def test_read_registry_refuses_malformed_entries(tmp_path, change, message):
    raw = yaml.safe_load(REAL_REGISTRY.read_text())
    change(raw["datasets"][0])
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=message):
        reg.read_registry(path)


# ----------------------------------------------------------------------------- downloads


def test_fetch_downloads_unpacks_and_reuses_the_cache(env, site):
    paths = reg.fetch("bbbc039", progressbar=True)
    assert paths == [env / "bbbc039" / "images", env / "bbbc039" / "masks", env / "bbbc039" / "metadata"]
    assert (env / "bbbc039" / "images" / "images" / f"{BBBC039_STEMS[0]}.tif").is_file()
    assert sorted(site.requests) == ["/bbbc039/images.zip", "/bbbc039/masks.zip", "/bbbc039/metadata.zip"]

    assert reg.fetch("bbbc039", progressbar=False) == paths
    assert len(site.requests) == 3, "a cached file was downloaded again"

    # An unpacked folder that went missing is unpacked again from the cached archive, without download.
    for path in (env / "bbbc039" / "masks" / "masks").iterdir():
        path.unlink()
    reg.fetch("bbbc039", progressbar=False)
    assert (env / "bbbc039" / "masks" / "masks" / f"{BBBC039_STEMS[0]}.png").is_file()
    assert len(site.requests) == 3


def test_a_corrupt_cached_file_is_downloaded_again(env, site):
    reg.fetch("dsb2018", progressbar=False)
    (env / "dsb2018" / "dsb2018.zip").write_bytes(b"half a file")
    reg.fetch("dsb2018", progressbar=False)
    assert site.requests == ["/dsb2018/dsb2018.zip"] * 2
    assert reg.load_dataset("dsb2018", progress=False).names == ["c3"]


def test_hash_mismatch_names_file_and_hashes_and_caches_nothing(env, site):
    site.corrupt.add("/bbbc039/masks.zip")
    try:
        with pytest.raises(reg.HashMismatchError) as caught:
            reg.fetch("bbbc039", progressbar=False)
    finally:
        site.corrupt.clear()
    served = site.root / "bbbc039" / "masks.zip"
    truncated = served.read_bytes()[: served.stat().st_size // 2]
    error = caught.value
    expected = next(f for f in reg.read_registry()["bbbc039"].files if f.fname == "masks.zip").hash
    assert error.expected == expected
    assert error.actual == "sha256:" + hashlib.sha256(truncated).hexdigest()
    for text in ("masks.zip", "bbbc039", expected, error.actual, "run the fetch again"):
        assert text in str(error)
    assert not (env / "bbbc039" / "masks.zip").exists()
    assert sorted(p.name for p in (env / "bbbc039").iterdir()) == ["images", "images.zip"]  # no temporary file left
    # The next attempt, with the file served intact, succeeds.
    reg.fetch("bbbc039", progressbar=False)


def test_server_down_names_the_url_and_the_mirror_variable(env, monkeypatch):
    mirror = _closed_port_url()
    monkeypatch.setenv(reg.MIRROR_ENV, mirror)
    with pytest.raises(reg.DownloadError, match="no connection") as caught:
        reg.fetch("dsb2018", progressbar=False)
    assert f"{mirror}/dsb2018/dsb2018.zip" in str(caught.value)
    assert reg.MIRROR_ENV in str(caught.value)
    assert not (env / "dsb2018" / "dsb2018.zip").exists()


def test_without_mirror_the_original_url_is_used_and_a_mirror_suggested(env, site, tmp_path, monkeypatch):
    raw = yaml.safe_load(site.registry.read_text())
    url = _closed_port_url() + "/stardist/releases/download/0.1.0/dsb2018.zip"
    next(d for d in raw["datasets"] if d["name"] == "dsb2018")["files"][0]["url"] = url
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv(reg.REGISTRY_ENV, str(tmp_path / "registry.yaml"))
    monkeypatch.delenv(reg.MIRROR_ENV)
    with pytest.raises(reg.DownloadError) as caught:
        reg.fetch("dsb2018", progressbar=False)
    assert url in str(caught.value) and f"set {reg.MIRROR_ENV}" in str(caught.value)


def test_http_error_is_reported(env, site, monkeypatch):
    monkeypatch.setenv(reg.MIRROR_ENV, site.url + "/elsewhere")
    with pytest.raises(reg.DownloadError, match="HTTP 404"):
        reg.fetch("dsb2018", progressbar=False)


def test_unverified_download_warns_with_its_checksum(env):
    with pytest.warns(UserWarning, match="no published checksum.*sha256 is [0-9a-f]{64}"):
        reg.fetch("ovules", progressbar=False)


def test_truncated_unverified_archive_is_deleted(env, site):
    site.corrupt.add("/ovules/ovules_train.zip")
    try:
        with pytest.raises(reg.DownloadError, match="ovules_train.zip.*not a valid zip"):
            reg.fetch("ovules", progressbar=False)
    finally:
        site.corrupt.clear()
    assert not (env / "ovules" / "ovules_train.zip").exists()


def test_fetch_all_then_export_mirror_serves_a_second_machine(env, site, tmp_path, monkeypatch):
    with pytest.warns(UserWarning, match="no published checksum"):
        paths = reg.fetch_all(progressbar=False)
    n_files = sum(len(e.files) for e in reg.list_datasets())
    assert len(paths) == n_files == len(site.requests)

    exported = reg.export_mirror(tmp_path / "mirror")
    assert len(exported) == n_files
    mirrored = tmp_path / "mirror" / "epfl" / "lucchi_pp.zip"
    assert mirrored.read_bytes() == (site.root / "epfl" / "lucchi_pp.zip").read_bytes()

    second = LoopbackSite(tmp_path / "mirror")
    try:
        monkeypatch.setenv(reg.MIRROR_ENV, second.url)
        monkeypatch.setenv(reg.DATA_DIR_ENV, str(tmp_path / "other_cache"))
        assert reg.load_dataset("epfl", progress=False).names
        assert second.requests == ["/epfl/lucchi_pp.zip"]
    finally:
        second.close()


def test_fetch_all_reports_every_failure(env, monkeypatch):
    monkeypatch.setenv(reg.MIRROR_ENV, _closed_port_url())
    with pytest.raises(reg.DownloadError) as caught:
        reg.fetch_all(progressbar=False)
    for entry in reg.list_datasets():
        assert f"- {entry.name}:" in str(caught.value)


def test_export_mirror_warns_about_datasets_not_fetched(env, tmp_path):
    reg.fetch("dsb2018", progressbar=False)
    with pytest.warns(UserWarning, match="Not fetched yet.*bbbc039/images.zip"):
        exported = reg.export_mirror(tmp_path / "mirror")
    assert exported == [tmp_path / "mirror" / "dsb2018" / "dsb2018.zip"]
    with pytest.raises(ValueError, match="is the cache itself"):
        reg.export_mirror(env)
    assert (env / "dsb2018" / "dsb2018.zip").is_file()


# ----------------------------------------------------------------------------- readers on the replicas


@pytest.mark.parametrize("name", list(REPLICAS))
def test_load_dataset_reads_the_replica(env, name):
    entry = reg.read_registry()[name]
    data = reg.load_dataset(name, progress=False)
    assert (data.dataset, data.split, data.task) == (name, entry.default_split, entry.task)
    assert len(data.images) == len(data.labels) == len(data.names) == REPLICAS[name][1]
    assert len(set(data.names)) == len(data.names)
    for image, labels in zip(data.images, data.labels):
        assert image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)
        assert labels.shape == image.shape[:2] and labels.any()
        if entry.tile:
            assert labels.shape == (entry.tile, entry.tile)
        if entry.task == "semantic":
            assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1}
        else:
            assert labels.dtype == np.uint16


def test_bbbc039_split_from_metadata_and_objects_from_connected_components(env):
    data = reg.load_dataset("bbbc039", progress=False)
    assert data.names == BBBC039_STEMS[3:]
    assert data.labels[0].max() == 2  # both discs carry one value in channel 0
    assert reg.load_dataset("bbbc039", "train", progress=False).names == BBBC039_STEMS[:2]


def test_hoechst_colour_annotations_become_objects(env):
    labels = reg.load_dataset("hoechst", progress=False).labels[0]
    assert len(np.unique(labels)) == 4  # background + 3 objects, two of them the same colour


def test_s_biad895_drops_the_images_with_wrong_masks(env):
    names = reg.load_dataset("s_biad895", "train", progress=False).names
    assert len(names) == 2 and S_BIAD895_INVALID not in names


def test_mitoem_splits_by_slice_number_and_skips_unlabelled_slices(env):
    def slices(split):
        return [name.split("_")[0] for name in reg.load_dataset("mitoem_human", split, progress=False).names]

    assert slices("test") == ["im0350", "im0399", "im0400", "im0401"]  # labels from both label folders
    assert slices("val") == ["im0349"]
    with pytest.raises(ValueError, match="no image with labelled foreground"):
        slices("train")


def test_epfl_pairs_slices_by_number_and_drops_the_remainder(env):
    data = reg.load_dataset("epfl", progress=False)
    assert data.names == ["mask0000_y0000_x0000", "mask0001_y0000_x0000"]


def test_load_dataset_limit(env):
    assert len(reg.load_dataset("vnc", limit=2, progress=False).images) == 2


def test_changed_archive_layout_names_the_expected_path(env):
    with pytest.raises(ArchiveLayoutError, match=r"dsb2018/dsb2018/test/images/\*\.tif.*holds: testing"):
        reg.load_dataset("dsb2018_changed", progress=False)


def test_unknown_dataset_and_split(env):
    with pytest.raises(ValueError, match="unknown dataset 'dsb2019'.*bbbc039"):
        reg.load_dataset("dsb2019")
    with pytest.raises(ValueError, match="no split 'holdout'.*train, test"):
        reg.load_dataset("dsb2018", "holdout")


def test_patches_tile_volumes_and_keep_small_images_whole():
    labels = np.zeros((2, 600, 520), np.uint16)
    labels[0, 10:20, 10:20] = 3  # patch (0, 0) of slice 0
    labels[0, 300:310, 300:310] = 4  # patch (256, 256) of slice 0
    labels[0, 590:600, 10:20] = 5  # only in the dropped bottom remainder
    volume = Sample("vol", lambda: (np.ones(labels.shape, np.uint8), labels), volume=True)
    patches = list(to_patches(volume, 256, "instance"))
    assert [name for name, _, _ in patches] == ["vol_z000_y0000_x0000", "vol_z000_y0256_x0256"]
    assert all(image.shape == (256, 256) for _, image, _ in patches)

    small = Sample("small", lambda: (np.ones((100, 90), np.uint8), np.ones((100, 90), np.uint8)))
    [(name, image, mask)] = to_patches(small, 256, "semantic")
    assert name == "small_y0000_x0000" and image.shape == (100, 90) and mask.dtype == np.uint8


# ----------------------------------------------------------------------------- the command line


def test_cli_datasets_and_fetch(env, site, monkeypatch, capsys):
    from cte_kit.cli import main

    assert main(["datasets"]) == 0
    assert "bbbc039" in capsys.readouterr().out
    assert main(["fetch", "dsb2018"]) == 0
    assert "file(s) ready" in capsys.readouterr().out
    assert sorted(site.requests) == ["/dsb2018/dsb2018.zip"]
    assert main(["fetch"]) == 2
    assert "NAME or --all" in capsys.readouterr().err
    monkeypatch.setenv(reg.MIRROR_ENV, _closed_port_url())
    monkeypatch.setenv(reg.DATA_DIR_ENV, str(env.parent / "other_cache"))
    assert main(["fetch", "dsb2018"]) == 2
    assert reg.MIRROR_ENV in capsys.readouterr().err
